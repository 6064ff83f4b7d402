"""Counting a built model's trainable parameters, and refusing a count over the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from budgetlora.errors import BudgetError

if TYPE_CHECKING:  # torch is imported lazily: `plan` must start fast
    import torch

# Display order: adapters first, then what trains besides them.
KINDS = ("lora_A", "lora_B", "dora_magnitude", "head", "bias", "other")


@dataclass
class Breakdown:
    """Trainable parameters by kind. `other` is everything besides adapters, head and biases,
    in practice the full copies of `modules_to_train` (e.g. LayerNorms)."""

    lora_A: int = 0
    lora_B: int = 0
    head: int = 0
    bias: int = 0
    dora_magnitude: int = 0
    other: int = 0

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
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        rel = name.removeprefix("base_model.model.")
        parts = rel.split(".")
        if "lora_A" in parts or "lora_embedding_A" in parts:
            out.lora_A += n
        elif "lora_B" in parts or "lora_embedding_B" in parts:
            out.lora_B += n
        elif "lora_magnitude_vector" in parts:
            out.dora_magnitude += n
        elif parts[0] in heads and "base_layer" not in parts:  # native: the adapted dense's bias is a bias
            out.head += n
        elif "modules_to_save" in parts:
            out.other += n
        elif parts[-1] == "bias":
            out.bias += n
        else:
            out.other += n
    return out


def check_budget(breakdown: Breakdown, budget: int) -> None:
    """Refuse a configuration that is not strictly under the budget, in one line that says what
    takes the room and what to change."""
    total = breakdown.total
    if total < budget:
        return
    over = total - budget + 1
    hints: list[tuple[int, str]] = []
    lora = breakdown.lora_A + breakdown.lora_B
    if breakdown.head and breakdown.head * 20 >= total:  # a small head (already linear) is not where the room goes
        hints.append((breakdown.head, f"--head linear (the head alone is {breakdown.head:,})"))
    if lora:
        hints.append((lora, "a smaller --r"))
        hints.append((lora - 1, "fewer --target-modules or --layers"))
    if breakdown.bias:
        hints.append((breakdown.bias, "--bias none"))
    if breakdown.dora_magnitude:
        hints.append((breakdown.dora_magnitude, "--no-use-dora"))
    if breakdown.other:
        hints.append((breakdown.other, "fewer --modules-to-train"))
    # Largest consumers first: those are the changes that can close the gap.
    suggestions = [text for size, text in sorted(hints, key=lambda h: -h[0])]
    advice = f"; to remove at least {over:,}, try " + ", ".join(suggestions) if suggestions else ""
    raise BudgetError(
        f"{total:,} trainable parameters is not under the budget of {budget:,} "
        f"({breakdown.describe()}){advice}, or see `budgetlora plan --budget {budget}`"
    )
