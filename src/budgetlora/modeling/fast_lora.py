"""A cheaper forward for plain LoRA on linear layers, which the planned default configuration puts
on every linear layer of the encoder.

peft's `lora.Linear.forward` computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`, and first
casts `x` to the adapter's dtype. Under bf16 autocast that cast is pure waste: the input of the
attention output and the feed-forward output layers arrives in bf16, is copied to fp32, and
autocast copies it straight back to bf16 for lora_A. And the up-projection, the scaling and the sum
are three passes over the layer's output. Here the up-projection, the scaling and the sum are one
`addmm` (one GEMM that accumulates into the base output), and the input is cast only where no
autocast does it. Same result up to rounding: the scaled sum is rounded once instead of three times.

`modeling.build.add_lora` gives it to `--method lora` runs only: rsLoRA, DoRA and every other
method keep peft's layers untouched. Within a plain LoRA layer, anything else (a variant, several
active adapters, merged or disabled adapters, peft's `lora_bias`, per-call arguments, Conv1D
weights) takes peft's own forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

_FAST: dict[type, type] = {}  # peft's class -> ours
_FAST_BASE: dict[type, type] = {}  # ours -> peft's

def _plain_parts(layer: Any) -> Optional[tuple[nn.Linear, nn.Linear, float, nn.Module]]:
    """(lora_A, lora_B, scaling, dropout) of the one active plain adapter; None where peft's own
    forward must run."""
    if layer.disable_adapters or layer.merged or getattr(layer, "fan_in_fan_out", False):
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    lora_b = layer.lora_B[name]
    if lora_b.bias is not None or not isinstance(layer.get_base_layer(), nn.Linear):
        return None
    return layer.lora_A[name], lora_b, layer.scaling[name], layer.lora_dropout[name]

def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    parts = None if (args or kwargs) else _plain_parts(self)
    if parts is None:
        return _FAST_BASE[type(self)].forward(self, x, *args, **kwargs)
    lora_a, lora_b, scaling, dropout = parts
    result = self.base_layer(x)
    if not torch.is_autocast_enabled(x.device.type):  # peft's cast; under autocast, autocast casts
        x = x.to(lora_a.weight.dtype)
    down = nn.functional.linear(dropout(x), lora_a.weight)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1]), lora_b.weight.t(),
                      alpha=scaling)
    return out.view(result.shape)

def use_fast_lora(model: nn.Module) -> int:
    """Give every peft LoRA linear layer of `model` the forward above; returns how many."""
    from peft.tuners.lora import layer as lora_layer

    n = 0
    for module in model.modules():
        cls = type(module)
        if cls is lora_layer.Linear:
            if cls not in _FAST:
                fast = type("FastLoraLinear", (cls,), {"forward": _forward, "__module__": __name__})
                _FAST[cls], _FAST_BASE[fast] = fast, cls
            module.__class__ = _FAST[cls]
            n += 1
    return n
