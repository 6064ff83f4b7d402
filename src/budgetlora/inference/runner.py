"""The inference loop shared by training's validation, `evaluate` and `predict`, and a finished run
loaded for it (`LoadedRun`).

Inference batches are sorted by length (longest first) so each batch pads only to its own longest
row; logits are put back into input order before anyone sees them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from budgetlora.core.device import autocast, inference_device, resolve_precision

log = logging.getLogger(__name__)


def inference_streams(device: torch.device) -> int:
    """How many Python threads run inference batches side by side: two on a CPU with two or more
    torch threads, each thread then on half of them; one elsewhere. Why: small matmuls and the
    element-wise kernels in between split poorly across cores, so two batches at once, each on its
    own core, beat one batch on both (docs/BENCHMARKS.md, two inference threads)."""
    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    input_ids: Sequence[Sequence[int]],
    batch_size: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    device: torch.device,
    precision: str,
    progress: bool = False,
) -> torch.Tensor:
    """Logits [N, num_labels] in fp32, in the order of `input_ids`."""
    import threading

    from tqdm.auto import tqdm

    from budgetlora.data import sorted_batches

    was_training = model.training
    model.eval()
    lengths = [len(x) for x in input_ids]
    batches = sorted_batches(lengths, batch_size)
    results: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(batches), desc="predict", unit="batch", disable=not progress or None, leave=False)
    streams = max(1, min(inference_streams(device), len(batches)))
    threads = torch.get_num_threads()
    errors: list[BaseException] = []

    def work(stream: int) -> None:
        try:
            if streams > 1:
                torch.set_num_threads(threads // streams)  # this thread's own setting
            with torch.inference_mode():  # grad mode is per thread
                for b in range(stream, len(batches), streams):  # longest and shortest batches alike
                    batch = collate([{"input_ids": input_ids[i]} for i in batches[b]])
                    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                    with autocast(device, precision):
                        results[b] = model(**batch).logits.float().cpu()
                    bar.update()
                    if errors:
                        return
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(err)

    if streams > 1:
        workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(streams)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        torch.set_num_threads(threads)
    else:
        work(0)
    bar.close()
    if was_training:
        model.train()
    if errors:
        raise errors[0]
    if not results:
        raise ValueError("no rows to predict")
    out = torch.empty(len(input_ids), results[0].shape[-1], dtype=torch.float32)
    for b, logits in results.items():
        out[torch.as_tensor(batches[b])] = logits
    return out


def accuracy_and_loss(model, enc, batch_size: int, collate, device: torch.device, precision: str) -> tuple[float, float]:
    logits = predict_logits(model, enc.input_ids, batch_size, collate, device, precision)
    labels = torch.as_tensor(enc.labels)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    # counted, then divided in Python: a float32 mean (0.9750000238 for 39/40) would differ from
    # the sharded evaluation's exact count / rows, and one- and several-process runs must agree
    acc = int((logits.argmax(-1) == labels).sum()) / max(len(labels), 1)
    return acc, loss


def inference_precision(cfg, device: torch.device) -> str:
    """The precision a run is served at: its own training setting, resolved for this device."""
    return resolve_precision(cfg.train.precision if cfg is not None else "auto", device)


class LoadedRun:
    """A finished run ready for inference: merged model, tokenizer, settings, device, precision.
    Also a folder written by `budgetlora export` (inference/exported.py)."""

    def __init__(self, run_dir: Union[str, Path], model: Optional[str] = None, quantize: bool = False):
        from budgetlora.config import TrainConfig, load_config
        from budgetlora.data import Collator
        from budgetlora.inference.exported import EXPORT_CONFIG, load_exported, read_export_meta
        from budgetlora.modeling import is_quantized, load_trained, pack_linear_layers

        self.run_dir = Path(run_dir)
        exported = read_export_meta(self.run_dir)
        if exported is None and not (self.run_dir / "adapter").is_dir():
            from budgetlora.errors import RunDirError

            raise RunDirError(f"{self.run_dir}: no trained adapter here (adapter/ is missing); is this a finished run "
                              "or a folder written by `budgetlora export`?")
        cfg_path = self.run_dir / (EXPORT_CONFIG if exported else "config.yaml")
        self.cfg = load_config(cfg_path) if cfg_path.is_file() else None
        self.device = inference_device()
        if exported is not None:
            if model is not None:
                from budgetlora.errors import ConfigError

                raise ConfigError("--model: an exported folder holds its merged weights; --model is for run folders")
            self.model, self.tokenizer, self.meta = load_exported(
                self.run_dir, exported, self.cfg, threads=max(1, torch.get_num_threads() // inference_streams(self.device)))
        else:
            self.model, self.tokenizer, self.meta = load_trained(
                self.run_dir, model, self.cfg.model if self.cfg is not None else None, merge=True
            )
        self.precision = inference_precision(self.cfg, self.device)
        if exported is not None and exported["format"] == "onnx":
            if quantize:
                from budgetlora.errors import ConfigError

                raise ConfigError("--quantize: an onnx export is quantized when it is written "
                                  "(budgetlora export --format onnx --quantize int8)")
            self.precision = "fp32"  # ONNX Runtime computes in the graph's own types
        elif is_quantized(self.model):  # a --quantize-base run: served on its bitsandbytes base, as trained
            if quantize:
                from budgetlora.errors import UserError

                raise UserError(f"{self.run_dir}: trained on a {self.meta.get('quantize_base')} base, which is "
                                "served quantized already; drop --quantize")
        elif quantize:
            self.model = quantize_int8(self.model)
            self.precision = "fp32"  # int8 kernels take fp32 activations
        elif self.precision in ("bf16", "fp16"):
            # The merged model is frozen: hold it in the low precision once instead of letting
            # autocast re-cast every weight on every batch (half the memory, no per-batch casts).
            self.model.to(torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if not is_quantized(self.model):  # bitsandbytes placed it on its device when loading
            self.model.to(self.device)
        if self.cfg is None or self.cfg.model.packed_cpu_linear:
            pack_linear_layers(self.model)  # a no-op unless the model is now bf16 on a CPU
        self.label_names: list[str] = list(self.meta["label_names"])
        self.max_length = int(self.meta.get("max_length", 128))
        self.eval_batch_size = (self.cfg.train if self.cfg else TrainConfig()).eval_batch_size
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.collate = Collator(pad)

    def logits(self, texts: list[str], batch_size: Optional[int] = None, progress: bool = False) -> torch.Tensor:
        from budgetlora.data import encode

        enc = encode(texts, self.tokenizer, self.max_length)
        return predict_logits(
            self.model, enc.input_ids, batch_size or self.eval_batch_size, self.collate, self.device,
            self.precision, progress=progress,
        )


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantization of the encoder's Linear layers (per-channel weights, activations
    quantized per batch). The head stays in fp32: it is tiny and quantizing it cost accuracy.

    Measured on a MiniLM AG News run (docs/BENCHMARKS.md): per-channel without the head lost 0.35
    points against fp32, per-tensor with the head 0.59; on a CPU with native bf16 the bf16 default
    is as fast and closer to fp32, so this is for CPUs without bf16.
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = model.float()
    heads = set(getattr(model, "modules_to_save", None) or ()) | {"classifier", "pre_classifier", "pooler"}
    spec = {
        name: per_channel_dynamic_qconfig
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and not any(part in heads for part in name.split("."))
    }
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8)
