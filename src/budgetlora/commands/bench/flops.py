"""Useful FLOPs of a model's work and the machine's limit (the best large matmul it runs).

Useful FLOPs (`model_flops`): per real (non-pad) token, forward 2N + backward-to-activations 2N
+ weight gradients 2N_trainable, N = non-embedding parameters of the model as trained (frozen base
+ LoRA + head); plus attention, 4*L*H*t FLOPs per token forward (QK^T and AV over the t real tokens
of its row) and twice that backward. Inference counts 2N + 4*L*H*t. Padded tokens do no useful
work. The shares of the machine's limit divide useful FLOP/s by the best of repeated large bf16
and fp32 matmuls measured here (`measure_matmul_peak`); on a GPU this is model-FLOPs utilisation.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from budgetlora.config import model_num_layers


def model_flops(
    lengths: Sequence[int],
    *,
    n_params: int,
    n_layers: int,
    hidden: int,
    n_trainable: int = 0,
    training: bool = True,
    first_token_only_params: int = 0,
    first_query_layers: int = 0,
) -> float:
    """Useful FLOPs to process rows of these real token lengths once.

    Per token: forward 2N, backward to activations 2N, weight gradients 2N_trainable (training
    only); attention 4*L*H*t forward per token of a row with t tokens (QK^T: 2tH, AV: 2tH per
    layer), 8*L*H*t backward. Summed over a row of t tokens the attention term is c*L*H*t^2.
    `first_token_only_params` run on one token per row (`first_token_last_layer`): the other
    tokens do not spend their 2 (forward) or 4 (training) FLOPs per parameter there, and in
    `first_query_layers` the attention term of a row is c*H*t (one query) instead of c*H*t^2.
    """
    tokens = sum(int(t) for t in lengths)
    squares = sum(int(t) * int(t) for t in lengths)
    if training:
        dense = 4 * n_params + 2 * n_trainable
        attn = 12 * n_layers * hidden
    else:
        dense = 2 * n_params
        attn = 4 * n_layers * hidden
    skipped = (4 if training else 2) * first_token_only_params * (tokens - len(lengths))
    skipped += attn // n_layers * first_query_layers * (squares - tokens) if n_layers else 0
    return float(dense * tokens + attn * squares - skipped)


def shape_flops(lengths: Sequence[int], shape: dict[str, int], training: bool = True) -> float:
    """`model_flops` for a model described by `model_shape`."""
    return model_flops(lengths, n_params=shape["non_embedding_params"], n_layers=shape["layers"],
                       hidden=shape["hidden"], n_trainable=shape["trainable_non_embedding_params"],
                       training=training, first_token_only_params=shape["first_token_only_params"],
                       first_query_layers=shape["first_query_layers"])


def model_shape(model: Any) -> dict[str, int]:
    """N (non-embedding parameters), trainable ones, LoRA ones, those run on the first token only,
    layers and hidden size of a model. A plain dict: it is spread into each pipeline's JSON."""
    from budgetlora.modeling import first_query_layers, first_token_only_params

    n_params = n_trainable = n_lora = n_embed = 0
    for name, p in model.named_parameters():
        if ".original_module." in name:  # peft's frozen spare copy of a modules_to_save head: never run
            continue
        k = p.numel()
        if "embeddings." in name and "lora_" not in name:
            n_embed += k
            continue
        n_params += k
        if p.requires_grad:
            n_trainable += k
        if "lora_" in name:
            n_lora += k
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None) or 0
    return {
        "non_embedding_params": n_params,
        "trainable_non_embedding_params": n_trainable,
        "lora_params": n_lora,
        "embedding_params": n_embed,
        "first_token_only_params": first_token_only_params(model),
        "first_query_layers": first_query_layers(model),
        "layers": int(model_num_layers(cfg) or 0),
        "hidden": int(hidden),
    }


def measure_matmul_peak(dtype: Any = "bfloat16", n: int = 2048, device: Any = None, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype` on `device` (2n^3 FLOPs each), after warm-up."""
    import torch

    from budgetlora.core.device import inference_device

    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    dev = torch.device(device) if device else inference_device()
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dt)
    b = torch.randn(n, n, generator=g).to(dev, dt)
    out = torch.empty(n, n, device=dev, dtype=dt)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(2):
        torch.matmul(a, b, out=out)
    sync()
    best = float("inf")
    spent, reps = 0.0, 0
    while reps < 3 or (spent < seconds and reps < 200):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        dt_s = time.perf_counter() - t0
        best = min(best, dt_s)
        spent += dt_s
        reps += 1
    return 2.0 * n**3 / best


def measure_peaks(n: int = 2048) -> dict[str, Any]:
    """The bf16 and fp32 matmul peaks of this machine's accelerator (or CPU)."""
    from budgetlora.core.device import inference_device

    device = inference_device().type
    return {
        "device": device,
        "matmul_n": n,
        "bf16_flops_per_second": measure_matmul_peak("bfloat16", n, device),
        "fp32_flops_per_second": measure_matmul_peak("float32", n, device),
    }
