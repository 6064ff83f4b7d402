"""Budget-aware defaults: what `budgetlora train` chooses itself when no adapter setting is given.

With no recipe and no method, head, LoRA or adapter flag, `train` spends `--budget` the way
`budgetlora plan --method lora` would advise: the planner's first candidate among DEFAULT_METHODS
for this model and budget sets the head, the target modules, the layers, the rank and alpha
(usually the `linear` head and LoRA on every linear layer at the largest rank that fits), and
PLANNED_LR sets `lr` unless `--lr` is given. Everything else keeps its documented default (LoRA
dropout 0, bias none, ...).

Any adapter setting given, by a flag or a recipe, means the user chose the adapter: nothing is
changed then (the seed recipes keep their exact settings, a resumed run its config.yaml).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Iterable, Optional

from budgetlora.budget.counting import check_budget
from budgetlora.budget.estimate import describe_model, estimate
from budgetlora.budget.planner import RANK_HALF_CREDIT, Candidate, plan
from budgetlora.config import AdapterConfig, LoraConfig, RunConfig, flag_value, resolved_method
from budgetlora.errors import BudgetError, ConfigError

# The methods the defaults choose among: plain LoRA. In the equal-budget comparison of the methods
# (docs/METHODS.md, "What the planner and the defaults take from it") no method measured clearly
# better than LoRA at its rate at any budget, LoRA's step is the cheapest of them (fast_lora), and
# the learning rate below was measured for LoRA. Widen this when a measurement says otherwise.
DEFAULT_METHODS: tuple[str, ...] = ("lora",)

# The settings that decide what trains (and so the count): a user who gives any of them chose the
# adapter. LoRA dropout is a regulariser, not a placement: `--lora-dropout 0.1` alone keeps the plan.
ADAPTER_SETTINGS = frozenset(
    {"head"} | {f.name for f in fields(LoraConfig)} - {"lora_dropout"} | {f.name for f in fields(AdapterConfig)}
)

# The learning rate of the planned adapter. alpha = 2r keeps the LoRA scale at 2 at every rank, so
# one rate serves every rank the planner picks; it was measured on two widths (MEASURED_HIDDEN),
# and docs/BUDGET.md ("Defaults") has the figures and the command.
PLANNED_LR = 2e-3
MEASURED_HIDDEN = (384, 768)


@dataclass(frozen=True)
class Unset:
    """Which settings the user left to `train`: the adapter's placement, the learning rate."""

    adapter: bool = False
    lr: bool = False


def unset_settings(given: Iterable[str], recipe: bool) -> Unset:
    """`given`: the names of the settings set by flags; `recipe`: a recipe (or a resumed run's
    config.yaml) was given. A recipe or any adapter flag leaves everything as given."""
    names = {n.replace("-", "_") for n in given}
    if recipe or names & ADAPTER_SETTINGS:
        return Unset()
    return Unset(adapter=True, lr="lr" not in names)


def lr_rule(hidden_size: Optional[int]) -> float:
    """The peak learning rate for the planned adapter (alpha = 2r) on an encoder of this width:
    the same at the widths measured (MEASURED_HIDDEN), and nothing measured says otherwise beyond."""
    return PLANNED_LR


@dataclass(frozen=True)
class Choice:
    """What `train` chose for the settings left unset, and how to ask for the same by flags."""

    candidate: Candidate
    lr: Optional[float]  # None: the given --lr was kept
    model: str
    model_text: str  # 'bert, 6 layers, hidden 384'
    hidden_size: Optional[int]
    budget: int
    alternatives: int  # candidates the planner found among DEFAULT_METHODS
    lora_dropout: float = 0.0  # as given (it does not change what trains)

    def flags(self) -> list[str]:
        """The `budgetlora train` flags that reproduce this choice (after --model)."""
        args = self.candidate.train_args(self.model, self.budget)[2:]
        args += ["--lr", flag_value(self.lr)] if self.lr is not None else []
        return args + (["--lora-dropout", flag_value(self.lora_dropout)] if self.lora_dropout else [])

    def message(self) -> str:
        """One line: what was chosen, why, and the flags that reproduce it."""
        c = self.candidate
        layers = "every layer" if c.layers is None else f"layers {','.join(map(str, c.layers))}"
        alpha = f" alpha={c.lora_alpha}" if c.r is not None else ""
        widths = " and ".join(map(str, MEASURED_HIDDEN))
        lr = (f"lr {flag_value(self.lr)} (the planned adapter's rate, measured on hidden {widths}; this model: "
              f"{self.hidden_size})" if self.lr is not None else "lr as given")
        return (
            f"no adapter settings given: spending the budget as `budgetlora plan --method "
            f"{','.join(DEFAULT_METHODS)}` advises: {c.head} head, {c.method} {c.size_text}{alpha} on "
            f"{c.targets_text} ({layers}), {c.trainable_params:,} trainable of < {self.budget:,}; {lr}; "
            f"LoRA dropout {self.lora_dropout:g}. Why: the planner's first of {self.alternatives} candidates for "
            f"{self.model_text} (the linear head first, then score {c.score:.3f} = coverage {c.coverage:.2f} "
            f"x r/(r+{RANK_HALF_CREDIT}); see docs/BUDGET.md). The same with flags: " + " ".join(self.flags())
        )


def choose_defaults(cfg: RunConfig, hf_config: Any, num_labels: int, unset: Unset) -> tuple[RunConfig, Optional[Choice]]:
    """`cfg` with the unset settings chosen for its model and budget (a copy), and the choice;
    `(cfg, None)` when the user gave the adapter, or when the planner has nothing for this model
    and the plain settings fit."""
    if not unset.adapter:
        return cfg, None
    try:
        candidates, _ = plan(hf_config, cfg.budget, num_labels, DEFAULT_METHODS)
    except ConfigError:  # no encoder blocks the planner can read: the plain settings, counted as usual
        candidates = []
    if not candidates:  # say what the plain settings would need, with check_budget's advice
        try:
            check_budget(estimate(cfg, hf_config, num_labels), cfg.budget, resolved_method(cfg))
        except BudgetError as e:
            raise BudgetError(f"no adapter configuration the planner tries fits under the budget of {cfg.budget:,}; "
                              f"the plain settings: {e}") from None
        return cfg, None
    best = candidates[0]
    hidden = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "dim", None)
    lr = lr_rule(hidden) if unset.lr else None
    choice = Choice(best, lr, cfg.model.model, describe_model(hf_config), hidden, cfg.budget, len(candidates),
                    cfg.lora.lora_dropout)
    return apply_candidate(cfg, best, lr), choice


def apply_candidate(cfg: RunConfig, c: Candidate, lr: Optional[float]) -> RunConfig:
    """A copy of `cfg` with the candidate's head, LoRA and adapter settings (and `lr` when given);
    the given LoRA dropout is kept, as it does not change what trains."""
    out = copy.deepcopy(cfg)
    planned = c.run_config()
    planned.lora.lora_dropout = cfg.lora.lora_dropout
    out.model.head, out.lora, out.adapter = planned.model.head, planned.lora, planned.adapter
    if lr is not None:
        out.train.lr = lr
    return out.validate()


__all__ = [
    "ADAPTER_SETTINGS", "DEFAULT_METHODS", "PLANNED_LR", "Choice", "Unset", "apply_candidate", "choose_defaults",
    "lr_rule", "unset_settings",
]
