"""Counting a built model's trainable parameters, and refusing a count over the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from budgetlora.errors import BudgetError

if TYPE_CHECKING:  # torch is imported lazily: `plan` must start fast
    import torch

# Display order: adapters first (LoRA's, then each other method's own kind), then what trains
# besides them.
KINDS = ("lora_A", "lora_B", "dora_magnitude", "adalora_E", "vera_lambda", "fourier_spectrum", "kronecker",
         "hadamard", "ia3_scale", "layernorm", "prompt", "head", "bias", "other")

# The parameter-name part that marks each method's tensors in a peft model, and its kind.
_NAME_KINDS = {
    "lora_A": "lora_A", "lora_embedding_A": "lora_A", "lora_B": "lora_B", "lora_embedding_B": "lora_B",
    "lora_magnitude_vector": "dora_magnitude", "lora_E": "adalora_E",
    "vera_lambda_b": "vera_lambda", "vera_lambda_d": "vera_lambda", "fourierft_spectrum": "fourier_spectrum",
    "lokr_w1": "kronecker", "lokr_w1_a": "kronecker", "lokr_w1_b": "kronecker", "lokr_w2": "kronecker",
    "lokr_w2_a": "kronecker", "lokr_w2_b": "kronecker", "lokr_t2": "kronecker",
    "hada_w1_a": "hadamard", "hada_w1_b": "hadamard", "hada_w2_a": "hadamard", "hada_w2_b": "hadamard",
    "hada_t1": "hadamard", "hada_t2": "hadamard", "ia3_l": "ia3_scale", "ln_tuning_layers": "layernorm",
    "prompt_encoder": "prompt",
}


@dataclass
class Breakdown:
    """Trainable parameters by kind. Each method's adapter tensors have their own kind (AdaLoRA's
    A and B count as lora_A and lora_B, its singular values as adalora_E); `other` is everything
    besides adapters, head and biases, in practice the full copies of `modules_to_train`."""

    lora_A: int = 0
    lora_B: int = 0
    head: int = 0
    bias: int = 0
    dora_magnitude: int = 0
    other: int = 0
    adalora_E: int = 0
    vera_lambda: int = 0
    fourier_spectrum: int = 0
    kronecker: int = 0
    hadamard: int = 0
    ia3_scale: int = 0
    layernorm: int = 0
    prompt: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in KINDS)

    def as_dict(self) -> dict[str, int]:
        d = {k: getattr(self, k) for k in KINDS}
        d["total"] = self.total
        return d

    def describe(self) -> str:
        parts = [f"{k} {getattr(self, k):,}" for k in KINDS if getattr(self, k)]
        return " · ".join(parts or ["nothing trainable"]) + f" = {self.total:,}"


def count_trainable(model: "torch.nn.Module") -> Breakdown:
    """Trainable parameters of a built model, by kind.

    Counts what `requires_grad` says, once per tensor (like `named_parameters()` and peft's own
    `get_nb_trainable_parameters`). peft's `modules_to_save` keeps the frozen original of the head
    next to its trainable copy; only the copy has `requires_grad`, so the head counts once.
    """
    from budgetlora.modeling import head_module_names

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    heads = set(head_module_names(base))
    out = Breakdown()
    params = dict(model.named_parameters())
    for name, p in params.items():
        if not p.requires_grad:
            continue
        n = p.numel()
        # A bias that trains beside a frozen weight is a bias, wherever it sits (BitFit; the native
        # head's hidden dense, frozen or LoRA-adapted), as `estimate` counts it.
        weight = params.get(name.removesuffix(".bias") + ".weight") if name.endswith(".bias") else None
        frozen_weight = weight is not None and not weight.requires_grad
        # base_model.model.X in a peft tuner model; base_model.X with prompt learning
        rel = name.removeprefix("base_model.model.").removeprefix("base_model.")
        parts = rel.split(".")
        kind = next((_NAME_KINDS[x] for x in parts if x in _NAME_KINDS), None)
        if kind is not None:
            setattr(out, kind, getattr(out, kind) + n)
        elif parts[0] in heads and "base_layer" not in parts and not frozen_weight:
            out.head += n
        elif "modules_to_save" in parts:
            out.other += n
        elif parts[-1] == "bias":
            out.bias += n
        else:
            out.other += n
    return out


# What shrinks each method's own kind (lora_A/B already say "a smaller --r").
_METHOD_KNOBS = {
    "adalora_E": "a smaller --adalora-init-r", "vera_lambda": "a smaller --vera-r or fewer --target-modules",
    "fourier_spectrum": "a smaller --fourierft-n-frequency", "kronecker": "a smaller --r or --lokr-decompose-both",
    "hadamard": "a smaller --r", "ia3_scale": "fewer --target-modules",
    "prompt": "fewer --num-virtual-tokens",
}


def check_budget(breakdown: Breakdown, budget: int, method: str = "lora") -> None:
    """Refuse a configuration that is not strictly under the budget, in one line that says what
    takes the room and what to change."""
    total = breakdown.total
    if total < budget:
        return
    if method == "full":  # nothing to shrink: the budget itself is what a reference run changes
        raise BudgetError(f"full fine-tuning trains all {total:,} parameters, not under the budget of {budget:,}; "
                          f"pass --budget {total + 1} or more for this reference run, or choose a "
                          f"parameter-efficient --method (see `budgetlora plan --budget {budget}`)")
    over = total - budget + 1
    hints: list[tuple[int, str]] = []
    lora = breakdown.lora_A + breakdown.lora_B
    if breakdown.head and breakdown.head * 20 >= total:  # a small head (already linear) is not where the room goes
        hints.append((breakdown.head, f"--head linear (the head alone is {breakdown.head:,})"))
    if lora and not breakdown.adalora_E:  # AdaLoRA's rank is --adalora-init-r (its own hint below)
        hints.append((lora, "a smaller --r"))
        hints.append((lora - 1, "fewer --target-modules or --layers"))
    if breakdown.bias:
        hints.append((breakdown.bias, "--bias none"))
    if breakdown.dora_magnitude:
        hints.append((breakdown.dora_magnitude, "--no-use-dora"))
    if breakdown.other:
        hints.append((breakdown.other, "fewer --modules-to-train"))
    for kind, knob in _METHOD_KNOBS.items():
        if getattr(breakdown, kind):
            hints.append((getattr(breakdown, kind), knob))
    # Largest consumers first: those are the changes that can close the gap.
    suggestions = [text for size, text in sorted(hints, key=lambda h: -h[0])]
    advice = f"; to remove at least {over:,}, try " + ", ".join(suggestions) if suggestions else ""
    raise BudgetError(
        f"{total:,} trainable parameters is not under the budget of {budget:,} "
        f"({breakdown.describe()}){advice}, or see `budgetlora plan --budget {budget}`"
    )
