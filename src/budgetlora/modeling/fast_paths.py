"""Fast paths for a built classifier; each gives the same function for less work.

- `first_token_last_layer`: for heads that read the first token alone, the last encoder layer
  runs its feed-forward block (and, where the attention goes through transformers' attention
  interface, its attention queries) on the first token only.
- `PackedLinear` / `pack_linear_layers`: oneDNN matmuls on pre-packed weights, with the bias and
  the feed-forward activation fused, for a frozen bf16 model run on a CPU.
- `resolve_attn_implementation`: the attention kernel 'auto' stands for on this machine.

Which modules each path touches comes from the family records (`architectures`).
"""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any, Optional

import torch
from torch import nn

from budgetlora.modeling.architectures import FAMILIES, family_of

# Registered with transformers' AttentionInterface; only the last layer's self-attention, given a
# config copy naming it, dispatches here (`first_token_last_layer`).
FIRST_QUERY_ATTENTION = "budgetlora_first_query"


def _first_query_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: Optional[torch.Tensor], **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The kernel the model was built with (`module._first_query_kernel`), for the first query only.

    Every key and value is still read, so the first token's output is what the full attention
    gives. The other positions get a copy of it, which `_first_token` cuts off after the output
    projection: the caller reshapes to its full [batch, tokens, hidden] shape before then.
    """
    if attention_mask is not None and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[..., :1, :]
    out, weights = module._first_query_kernel(module, query[:, :, :1], key, value, attention_mask, **kwargs)
    return out.expand(query.shape[0], query.shape[2], *out.shape[2:]), weights


def _first_query_last_layer(attn: nn.Module) -> bool:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = getattr(attn, "config", None)
    base = getattr(config, "_attn_implementation", None)
    own_eager = getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None)
    if base not in ("eager", "sdpa") or own_eager is None:
        return False  # e.g. flash attention, whose batch layout this slicing does not know
    AttentionInterface.register(FIRST_QUERY_ATTENTION, _first_query_attention)
    attn._first_query_kernel = ALL_ATTENTION_FUNCTIONS.get_interface(base, own_eager)
    # A copy, so that this module alone dispatches to it; the model's masks stay built for `base`.
    attn.config = copy.copy(config)
    attn.config._attn_implementation = FIRST_QUERY_ATTENTION
    return True


def _first_token(module: nn.Module, args: Any, output: Any) -> Any:
    # contiguous: the feed-forward matmuls on a strided slice were measured slower than on a copy
    if isinstance(output, tuple):
        return (output[0][:, :1].contiguous(), *output[1:])
    return output[:, :1].contiguous()


def first_token_last_layer(model: nn.Module) -> bool:
    """Cut the last encoder layer to the first token after its attention; True where installed.

    Only for heads that read nothing but the first token. The last layer's attention must still
    see every token (its keys and values), but its feed-forward block and everything after it
    work on each token alone, so running them on the first token gives the same logits for less
    work: 8 of the layer's 12 H^2 matmul FLOPs per token, 11% of a 6-layer model's, forward and
    backward. A forward hook rather than a patched forward: it survives peft wrapping and LoRA
    merging and needs no copy of the architectures' code.

    Where the layer's self-attention goes through transformers' attention interface (BERT-style
    and DistilBERT layers, eager or SDPA kernel), that attention also computes the first query
    alone (`_first_query_attention`): the layer's softmax(QK^T)V shrinks from tokens^2 to tokens
    per row.
    """
    family = family_of(getattr(model.config, "model_type", None))
    if family is None:
        return False
    ffn_input, self_attention = family.last_layer_parts
    stacks = [m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] == "layer"]
    if len(stacks) != 1 or not len(stacks[0]) or not hasattr(stacks[0][-1], ffn_input):
        return False
    last = stacks[0][-1]
    getattr(last, ffn_input).register_forward_hook(_first_token)
    try:
        attn = last.get_submodule(self_attention) if self_attention is not None else None
    except AttributeError:  # a layer laid out otherwise: the feed-forward cut alone
        attn = None
    if attn is not None:
        _first_query_last_layer(attn)
    return True


def first_query_layers(model: nn.Module) -> int:
    """Layers whose attention `first_token_last_layer` computes for the first query alone (0 or 1).
    For FLOP counts."""
    return sum(getattr(getattr(m, "config", None), "_attn_implementation", None) == FIRST_QUERY_ATTENTION
               for m in model.modules())


def first_token_only_params(model: nn.Module) -> int:
    """Parameters that `first_token_last_layer` runs on each row's first token only (the last
    layer's modules after its attention); 0 where it is off. For FLOP counts."""
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if any(hook is _first_token for hook in module._forward_hooks.values()):
            layer_name, _, hooked = name.rpartition(".")
            return sum(p.numel() for child_name, child in modules[layer_name].named_children()
                       if child_name not in (hooked, "attention") for p in child.parameters())
    return 0


# Every known family's feed-forward pair, tried on any model: a module holding both names is such a
# block whatever the architecture calls itself.
FFN_PAIRS = tuple(dict.fromkeys(f.ffn_pair for f in FAMILIES))


def _fusable_activation(act: nn.Module) -> Optional[tuple[str, str]]:
    """oneDNN's (post-op, algorithm) computing the same function as `act`, or None."""
    from transformers.activations import GELUActivation, GELUTanh

    fn = getattr(act, "act", None)
    if isinstance(act, nn.GELU):
        return "gelu", act.approximate
    if type(act) is GELUActivation and fn is nn.functional.gelu:
        return "gelu", "none"
    if type(act) is GELUTanh and isinstance(fn, functools.partial) and fn.func is nn.functional.gelu \
            and fn.keywords == {"approximate": "tanh"}:
        return "gelu", "tanh"
    return None


def packed_linear_available() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class PackedLinear(nn.Module):
    """Inference-only stand-in for a frozen `nn.Linear` in bf16 on a CPU: oneDNN's matmul on a
    weight reordered once into the kernel's blocked layout, with the bias, and the activation that
    follows the layer where `activation` names one, applied inside the kernel.

    `nn.Linear` in bf16 runs on the weight's plain layout and writes the bias into its output in a
    pass of its own (a copy the size of the output: 7% of the prediction loop in the profile), and
    the activation then reads and writes the output once more. The packed weight is oneDNN's opaque
    tensor: not a Parameter, not in the state dict, not moved or cast by `.to()`; so this is for a
    merged model that is only run, never trained or saved.
    """

    def __init__(self, linear: nn.Linear, activation: tuple[str, str] = ("none", ""), rows_hint: int = 4096):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.post_op, self.algorithm = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, self.post_op, [], self.algorithm)

    def __deepcopy__(self, memo: dict) -> "PackedLinear":
        # oneDNN's opaque tensor has no storage to copy: repack a dense copy of the weight (into a
        # layer left uninitialised, since every value is overwritten)
        dense = torch.nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                                         device="cpu", dtype=torch.bfloat16)
        with torch.no_grad():
            dense.weight.copy_(self.packed_weight.to_dense())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return PackedLinear(dense, (self.post_op, self.algorithm))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, post_op={self.post_op}"


def pack_linear_layers(model: nn.Module) -> int:
    """Swap every `nn.Linear` of a frozen bf16 CPU model for a `PackedLinear`, fusing the
    feed-forward activation where the family's layout and the activation allow; returns how many
    were swapped (0 where oneDNN's ops are missing or the model is not bf16 on a CPU).

    Same function up to bf16 rounding: the fused kernel adds the bias and applies the activation
    to the fp32 accumulator and rounds once, where the plain path rounds after the matmul and again
    after the activation.
    """
    params = list(model.parameters())
    if not packed_linear_available() or not params or any(
        p.device.type != "cpu" or p.dtype != torch.bfloat16 for p in params
    ):
        return 0
    fused: dict[int, tuple[str, str]] = {}
    for module in model.modules():
        for linear_name, act_name in FFN_PAIRS:
            linear, act = getattr(module, linear_name, None), getattr(module, act_name, None)
            post_op = _fusable_activation(act) if isinstance(act, nn.Module) else None
            if type(linear) is nn.Linear and post_op is not None:
                fused[id(linear)] = post_op
                setattr(module, act_name, nn.Identity())
    swapped = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, PackedLinear(child, fused.get(id(child), ("none", ""))))
                swapped += 1
    return swapped


def resolve_attn_implementation(name: str) -> str:
    """'auto': SDPA's fused kernels on a GPU; on a CPU plain matmul + softmax ('eager'), which
    trained 1.3x faster than SDPA in bf16 here (docs/BENCHMARKS.md)."""
    if name != "auto":
        return name
    return "sdpa" if torch.cuda.is_available() else "eager"
