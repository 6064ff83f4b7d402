"""The planner: the adapter configurations that fit a budget, best first, from the model config
alone. `budgetlora plan` prints them; `train` takes the first one when no adapter setting is given
(budget.defaults).

Candidates are head (default | linear) x target set (q,v | q,k,v | q,k,v,o | every linear layer
of a block) x layer subset (all, or the top 3/4, 1/2, 1/3, 1/4, 2 or 1 blocks) x DoRA off/on.
For each one the rank is the largest r (up to 64) that keeps the count strictly under the
budget; smaller ranks of the same placement are not listed, as they only give capacity away.
Counts come from `budget.estimate`'s analytic replay of peft, so planning needs the model
config only (no weights) and takes well under a second.

Ranking (documented in docs/BUDGET.md): the linear head's candidates first (measured), then by
score = coverage x r / (r + 4), where coverage is the
share of the encoder's linear layers that get an adapter ('all-linear' = 1). Spreading LoRA
over more weight matrices beats a higher rank on fewer (Hu et al. 2021, table 5; QLoRA), and
returns in r flatten quickly (Hu et al. table 6), which r / (r + 4) models: r=4 earns half
the credit of an unbounded rank, r=8 two thirds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

from budgetlora.budget.counting import Breakdown
from budgetlora.budget.estimate import count_on_meta, inventory_from_model
from budgetlora.budget.rules import Analysis, NeedsMeta, analyse
from budgetlora.config import DEFAULT_BUDGET, LoraConfig, ModelConfig, RunConfig, to_flags
from budgetlora.errors import ConfigError
from budgetlora.modeling import Inventory, module_inventory

MAX_RANK = 64  # beyond this LoRA ranks rarely help (Hu et al. table 6) and plans get silly
RANK_HALF_CREDIT = 4  # the r that earns half of the rank credit in the score
ROLES = ("all", "attn", "qkv", "qv")


@dataclass
class Candidate:
    head: str
    role: str
    target_modules: Union[list[str], str]
    layers: Optional[list[int]]  # None: every layer
    r: int
    use_dora: bool
    breakdown: Breakdown
    adapted: int  # modules that get LoRA
    coverage: float
    score: float

    @property
    def trainable_params(self) -> int:
        return self.breakdown.total

    @property
    def lora_alpha(self) -> int:
        # alpha = 2r keeps the LoRA scale alpha/r at 2 for every rank (r=8, alpha=16 convention)
        return 2 * self.r

    @property
    def targets_text(self) -> str:
        return self.target_modules if isinstance(self.target_modules, str) else ",".join(self.target_modules)

    def train_args(self, model: str, budget: int) -> list[str]:
        """The `budgetlora train` flags that reproduce this configuration."""
        settings: dict[str, Any] = {"model": model, "head": self.head, "target_modules": self.target_modules}
        if self.layers is not None:
            settings["layers"] = self.layers
        settings.update(r=self.r, lora_alpha=self.lora_alpha)
        if self.use_dora:
            settings["use_dora"] = True
        if budget != DEFAULT_BUDGET:
            settings["budget"] = budget
        return to_flags(settings)

    def as_json(self, model: str, budget: int) -> dict[str, Any]:
        return {
            "trainable_params": self.trainable_params,
            "share_of_budget": round(self.trainable_params / budget, 6),
            "head": self.head,
            "target_modules": self.target_modules,
            "layers": self.layers,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_dora": self.use_dora,
            "bias": "none",
            "adapted_modules": self.adapted,
            "coverage": round(self.coverage, 6),
            "score": round(self.score, 6),
            "breakdown": self.breakdown.as_dict(),
            "train_args": self.train_args(model, budget),
        }


def score(coverage: float, r: int) -> float:
    return coverage * r / (r + RANK_HALF_CREDIT)


def layer_subsets(n: int) -> list[Optional[list[int]]]:
    """All layers, then the top 3/4, 1/2, 1/3, 1/4, 2 and 1 blocks: adapters matter most near
    the output for classification (Houlsby et al. 2019, fig. 6; AdaLoRA's rank allocation)."""
    sizes = sorted({n, math.ceil(3 * n / 4), math.ceil(n / 2), math.ceil(n / 3), math.ceil(n / 4), 2, 1}, reverse=True)
    return [None if k == n else list(range(n - k, n)) for k in sizes if 1 <= k <= n]


def target_modules_for(inv: Inventory, role: str, layers: Optional[list[int]]) -> Union[list[str], str]:
    """The shortest peft suffixes that select exactly this role's modules in the chosen blocks."""
    if role == "all" and layers is None:
        return "all-linear"
    names = inv.roles[role]
    others = [n for n in inv.block_relative(0) if n not in names]
    if layers is None:  # no layer filter: a suffix must not match anything outside the blocks
        block = f"{inv.block_prefix}."
        others += [k for k in inv.keys if not k.startswith(block) and k != inv.block_prefix
                   and k.split(".")[0] not in inv.head_names]
    chosen: list[str] = []
    for name in names:
        parts = name.split(".")
        pick = name
        for j in range(1, len(parts) + 1):
            suffix = ".".join(parts[-j:])
            if not any(o == suffix or o.endswith("." + suffix) for o in others):
                pick = suffix
                break
        if pick not in chosen:
            chosen.append(pick)
    return chosen


def run_config(head: str, targets: Union[list[str], str], layers: Optional[list[int]], r: int, dora: bool) -> RunConfig:
    return RunConfig(
        model=ModelConfig(head=head),
        lora=LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, layers=layers, use_dora=dora, bias="none"),
    )


def _inventories(hf_config: Any, num_labels: int) -> dict[str, Inventory]:
    invs = {}
    for head in ("default", "linear"):
        inv = module_inventory(hf_config, head, num_labels)
        if inv is None:
            inv = _meta_inventory(hf_config, head, num_labels)
        if inv.roles:
            invs[head] = inv
    return invs


def _meta_inventory(hf_config: Any, head: str, num_labels: int) -> Inventory:
    """For an architecture without an analytic description: read the module tree off a model
    built on the meta device. Candidates planned on it are re-counted by peft (see `plan`)."""
    from budgetlora.modeling import build_on_meta

    model = build_on_meta(hf_config, num_labels, ModelConfig(head=head))
    return inventory_from_model(model, head, getattr(hf_config, "model_type", "?"))


def plan(hf_config: Any, budget: int = DEFAULT_BUDGET, num_labels: int = 4) -> tuple[list[Candidate], int]:
    """(candidates strictly under the budget, best first; number of placements tried)."""
    if budget < 1:
        raise ConfigError(f"budget: must be a positive number of parameters, got {budget}")
    invs = _inventories(hf_config, num_labels)
    if not invs:
        raise ConfigError(
            f"plan: no numbered encoder blocks found in this {getattr(hf_config, 'model_type', '?')} model; "
            "count a given configuration with --explain instead"
        )
    found: dict[tuple, Candidate] = {}
    tried = 0
    for head, inv in invs.items():
        try:
            n_all = len(analyse(run_config(head, "all-linear", None, 1, False), inv).adapted)
        except NeedsMeta:  # unknown layer types: count the plain linear layers outside the head
            n_all = sum(1 for m in inv.modules if m.kind == "linear" and m.name.split(".")[0] not in inv.head_names)
        for role in ROLES:
            if role not in inv.roles:
                continue
            for layers in layer_subsets(inv.num_layers):
                targets = target_modules_for(inv, role, layers)
                for dora in (False, True):
                    tried += 1
                    try:
                        one = analyse(run_config(head, targets, layers, 1, dora), inv)
                    except (NeedsMeta, ConfigError):
                        continue
                    # With one rank everywhere the count is linear in r: fixed + r * slope.
                    slope = sum(a.in_features + a.out_features for a in one.adapted)
                    fixed = one.breakdown.total - slope
                    r = min(MAX_RANK, (budget - 1 - fixed) // slope)
                    if r < 1:
                        continue
                    final = analyse(run_config(head, targets, layers, r, dora), inv)
                    if not inv.exact:
                        final = _recount(final, head, targets, layers, r, dora, hf_config, num_labels)
                    if final.breakdown.total >= budget:
                        continue
                    key = (head, tuple(a.name for a in final.adapted), r, dora)
                    if key in found:
                        continue
                    coverage = len(final.adapted) / n_all
                    found[key] = Candidate(head, role, targets, layers, r, dora, final.breakdown,
                                           len(final.adapted), coverage, score(coverage, r))
    ranked = sorted(
        found.values(),
        # The linear head first, whatever the score: measured on MiniLM (`plan --measure 8`,
        # docs/BUDGET.md), every candidate with BERT's default head (a classifier on the frozen
        # pooler) scored 12-15 points below every one with the linear head, at the same coverage.
        # Ties: plain LoRA before DoRA (same rank, cheaper steps on a CPU), then the fuller budget.
        key=lambda c: (c.head != "linear", -round(c.score, 9), c.use_dora, -c.trainable_params, c.head,
                       ROLES.index(c.role)),
    )
    return ranked, tried


def _recount(found: Analysis, head, targets, layers, r, dora, hf_config, num_labels) -> Analysis:
    measured = count_on_meta(run_config(head, targets, layers, r, dora), hf_config, num_labels)
    return Analysis(measured, found.adapted, found.wrapped)
