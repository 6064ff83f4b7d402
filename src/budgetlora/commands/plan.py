"""`budgetlora plan`: the adapter configurations that fit a budget, best first.

Candidates are head (default | linear | native) x target set (q,v | q,k,v | q,k,v,o | every linear layer
of a block) x layer subset (all, or the top 3/4, 1/2, 1/3, 1/4, 2 or 1 blocks) x DoRA off/on.
For each one the rank is the largest r (up to 64) that keeps the count strictly under the
budget; smaller ranks of the same placement are not listed, as they only give capacity away.
Counts come from `budget.estimate`'s analytic replay of peft, so planning needs the model
config only (no weights) and takes well under a second.

Ranking (documented in docs/BUDGET.md): score = coverage x r / (r + 4), where coverage is the
share of the encoder's linear layers that get an adapter ('all-linear' = 1). Spreading LoRA
over more weight matrices beats a higher rank on fewer (Hu et al. 2021, table 5; QLoRA), and
returns in r flatten quickly (Hu et al. table 6), which r / (r + 4) models: r=4 earns half
the credit of an unbounded rank, r=8 two thirds.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import dataclass
from typing import Any, Optional, Union

from budgetlora.budget import (
    Analysis, Breakdown, NeedsMeta, analyse, check_budget, count_on_meta, describe_model, estimate,
    inventory_from_model, load_config_only,
)
from budgetlora.config import DEFAULT_BUDGET, HEADS, LoraConfig, ModelConfig, RunConfig, to_flags
from budgetlora.modeling.head_specs import NATIVE_HEADS
from budgetlora.errors import BudgetError, ConfigError
from budgetlora.flags import add_train_arguments, config_overrides
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


def _run_config(head: str, targets: Union[list[str], str], layers: Optional[list[int]], r: int, dora: bool) -> RunConfig:
    return RunConfig(
        model=ModelConfig(head=head),
        lora=LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, layers=layers, use_dora=dora, bias="none"),
    )


def _inventories(hf_config: Any, num_labels: int) -> dict[str, Inventory]:
    invs = {}
    for head in HEADS:
        if head == "native" and getattr(hf_config, "model_type", None) not in NATIVE_HEADS:
            continue  # an architecture whose head budgetlora cannot split (core/heads.py)
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
            n_all = len(analyse(_run_config(head, "all-linear", None, 1, False), inv).adapted)
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
                        one = analyse(_run_config(head, targets, layers, 1, dora), inv)
                    except (NeedsMeta, ConfigError):
                        continue
                    # With one rank everywhere the count is linear in r: fixed + r * slope.
                    slope = sum(a.in_features + a.out_features for a in one.adapted)
                    fixed = one.breakdown.total - slope
                    r = min(MAX_RANK, (budget - 1 - fixed) // slope)
                    if r < 1:
                        continue
                    final = analyse(_run_config(head, targets, layers, r, dora), inv)
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
        # Ties: plain LoRA before DoRA (same rank, cheaper steps on a CPU), then the fuller budget.
        key=lambda c: (-round(c.score, 9), c.use_dora, -c.trainable_params, c.head, ROLES.index(c.role)),
    )
    return ranked, tried


def _recount(found: Analysis, head, targets, layers, r, dora, hf_config, num_labels) -> Analysis:
    measured = count_on_meta(_run_config(head, targets, layers, r, dora), hf_config, num_labels)
    return Analysis(measured, found.adapted, found.wrapped)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def plan_command(
    model: str,
    budget: Optional[int] = None,
    labels: int = 4,
    top: int = 20,
    as_json: bool = False,
    explain: Optional[str] = None,
) -> str:
    """Text (or JSON) for `budgetlora plan`."""
    if labels < 1:
        raise ConfigError(f"labels: need at least one class, got {labels}")
    hf_config = load_config_only(model, labels)
    if explain is not None:
        return explain_flags(model, hf_config, explain, budget, labels)
    budget = DEFAULT_BUDGET if budget is None else budget
    candidates, tried = plan(hf_config, budget, labels)
    if as_json:
        return json.dumps([c.as_json(model, budget) for c in candidates], indent=2)
    return format_table(model, hf_config, candidates, tried, budget, labels, top)


def _layers_text(layers: Optional[list[int]]) -> str:
    if layers is None:
        return "all"
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _share(total: int, budget: int) -> str:
    # Rounded down, so that a configuration under the budget never shows as 100.0%.
    return f"{math.floor(1000 * total / budget) / 10:.1f}%"


def format_table(model: str, hf_config: Any, candidates: list[Candidate], tried: int, budget: int,
                 labels: int, top: int) -> str:
    head_line = f"budgetlora plan: {model} ({describe_model(hf_config)}), {labels} labels"
    if not candidates:
        return (f"{head_line}\nno configuration has fewer than {budget:,} trainable parameters; "
                f"try --head linear with a larger --budget, or --explain to see one configuration's count")
    shown = candidates if top <= 0 else candidates[:top]
    rows = [("#", "trainable", "budget", "head", "targets", "layers", "r", "DoRA", "score")]
    for i, c in enumerate(shown, 1):
        rows.append((str(i), f"{c.trainable_params:,}", _share(c.trainable_params, budget), c.head,
                     c.targets_text, _layers_text(c.layers), str(c.r), "yes" if c.use_dora else "-", f"{c.score:.3f}"))
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    right = {0, 1, 2, 6, 8}

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    out = [
        head_line,
        f"budget: fewer than {budget:,} trainable parameters; {len(candidates)} of {tried} placements fit "
        f"(each at the largest r <= {MAX_RANK} that fits); "
        + (f"top {len(shown)} by score:" if len(shown) < len(candidates) else "all, by score:"),
        "",
        line(rows[0]),
    ]
    indent = " " * (widths[0] + 2)
    for c, row in zip(shown, rows[1:]):
        out.append(line(row))
        out.append(indent + "budgetlora train " + shlex.join(c.train_args(model, budget)))
    out += [
        "",
        f"score = coverage x r/(r+{RANK_HALF_CREDIT}); coverage = share of the encoder's linear layers "
        "adapted (all-linear = 1); see docs/BUDGET.md",
    ]
    return "\n".join(out)


def _train_flags_parser() -> argparse.ArgumentParser:
    """A parser of `train`'s own arguments, so that --explain reads flags exactly as train does."""
    train = argparse.ArgumentParser(prog="budgetlora train", add_help=False)
    add_train_arguments(train)
    train.add_argument("--debug", action="store_true")

    def error(message: str):
        raise ConfigError(f"--explain: {message}")

    train.error = error  # type: ignore[method-assign]
    return train


def explain_flags(model: str, hf_config: Any, flags: str, budget: Optional[int], labels: int) -> str:
    """The breakdown of one configuration given as `budgetlora train` flags."""
    from budgetlora.config import load_config

    try:
        tokens = shlex.split(flags)
    except ValueError as e:
        raise ConfigError(f"--explain: cannot split the flags ({e})") from None
    ns = _train_flags_parser().parse_args(tokens)
    overrides = config_overrides(ns)
    given_model = overrides.pop("model", None)
    if budget is not None and "budget" not in overrides:
        overrides["budget"] = budget
    run = load_config(ns.config, overrides)
    run.model.model = model

    lines = [f"budgetlora plan --explain: {model} ({describe_model(hf_config)}), {labels} labels"]
    if given_model is not None and given_model != model:
        lines.append(f"note: counted on {model} (--model), not on {given_model} from the flags")
    lora = run.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ",".join(lora.target_modules)
    lines.append(
        f"configuration: head {run.model.head}, target_modules {targets}, layers {_layers_text(lora.layers or None)}, "
        f"r {lora.r}, alpha {lora.lora_alpha:g}, bias {lora.bias}, DoRA {'on' if lora.use_dora else 'off'}"
        + (f", rank_pattern {lora.rank_pattern}" if lora.rank_pattern else "")
        + (f", modules_to_train {','.join(lora.modules_to_train)}" if lora.modules_to_train else "")
    )
    detail: Optional[Analysis] = None
    inv = module_inventory(hf_config, run.model.head, labels)
    if inv is not None:
        try:
            detail = analyse(run, inv)
        except NeedsMeta:
            detail = None
    breakdown = detail.breakdown if detail is not None else estimate(run, hf_config, labels)
    if detail is not None:
        lines.append(f"LoRA on {len(detail.adapted)} modules:")
        lines += _adapted_lines(inv, detail)
        if detail.wrapped:
            lines.append("trained whole (peft modules_to_save): " + _wrapped_text(inv, detail.wrapped))
    else:
        lines.append("counted by peft on the meta device (no per-module detail for this case)")
    width = max(len(f"{v:,}") for v in breakdown.as_dict().values())
    for kind, value in breakdown.as_dict().items():
        if kind != "total" and value:
            lines.append(f"  {kind:<15}{value:>{width},}")
    total = breakdown.total
    verdict = f"{_share(total, run.budget)} of the budget of {run.budget:,}"
    try:
        check_budget(breakdown, run.budget)
        lines.append(f"  {'total':<15}{total:>{width},}   {verdict}: fits, {run.budget - total:,} to spare")
    except BudgetError as e:
        lines.append(f"  {'total':<15}{total:>{width},}   {verdict}: OVER BUDGET")
        lines.append(f"budgetlora train would refuse it: {e}")
    return "\n".join(lines)


def _in_block(inv: Inventory, name: str) -> tuple[str, Optional[int]]:
    """('attention.self.query', 3) for a module of block 3; (name, None) outside the blocks."""
    layer = inv.layer_of.get(name)
    start = f"{inv.block_prefix}.{layer}."
    if inv.block_prefix and layer is not None and name.startswith(start):
        return name[len(start):], layer
    return name, None


def _adapted_lines(inv: Inventory, detail: Analysis) -> list[str]:
    """One line per kind of adapted module: 'attention.self.query x12  layers 0-11  768->768  r=8'."""
    groups: dict[tuple, list[Optional[int]]] = {}
    for a in detail.adapted:
        name, layer = _in_block(inv, a.name)
        groups.setdefault((name, a.in_features, a.out_features, a.r), []).append(layer)
    rows = []
    for (name, i, o, r), layers in groups.items():
        rows.append(f"  {_grouped(name, layers)}  {i}->{o}  r={r}")
    return rows


def _wrapped_text(inv: Inventory, names: list[str]) -> str:
    groups: dict[str, list[Optional[int]]] = {}
    for n in names:
        name, layer = _in_block(inv, n)
        groups.setdefault(name, []).append(layer)
    return ", ".join(_grouped(name, layers) for name, layers in groups.items())


def _grouped(name: str, layers: list[Optional[int]]) -> str:
    if layers == [None]:
        return name
    return f"{name} x{len(layers)} (layers {_layers_text(sorted(x for x in layers if x is not None))})"
