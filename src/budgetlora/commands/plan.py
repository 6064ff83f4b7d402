"""`budgetlora plan`: the adapter configurations that fit a budget, best first (the planner itself
is `budget.planner`), `--explain` for one configuration's count, and `--measure K`, which trains the
first K briefly and ranks them by validation accuracy beside the planner's ranking.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from typing import Any, Callable, Optional

from budgetlora.budget import Analysis, NeedsMeta, analyse, check_budget, describe_model, estimate, load_config_only
from budgetlora.budget.planner import (  # noqa: F401  (the planner's names, as this module exported them)
    MAX_RANK, RANK_HALF_CREDIT, ROLES, Candidate, layer_subsets, plan, score, target_modules_for,
)
from budgetlora.budget.planner import run_config as _run_config  # noqa: F401
from budgetlora.config import DEFAULT_BUDGET
from budgetlora.errors import BudgetError, ConfigError
from budgetlora.flags import add_train_arguments, config_overrides
from budgetlora.modeling import Inventory, module_inventory


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
    measure: int = 0,
    train_file: Optional[str] = None,
    measure_rows: int = 256,
    measure_eval_rows: int = 500,
    seed: int = 42,
    progress: Optional[Callable[[str], None]] = None,
) -> str:
    """Text (or JSON) for `budgetlora plan`; with `measure` K > 0, the first K candidates are also
    trained briefly and ranked by validation accuracy (commands.measure)."""
    if labels < 1:
        raise ConfigError(f"labels: need at least one class, got {labels}")
    if measure and not train_file:
        raise ConfigError("plan --measure: give --train-file FILE (the model folder must hold weights too)")
    hf_config = load_config_only(model, labels)
    if explain is not None:
        return explain_flags(model, hf_config, explain, budget, labels)
    budget = DEFAULT_BUDGET if budget is None else budget
    candidates, tried = plan(hf_config, budget, labels)
    measured = None
    if measure:
        from budgetlora.commands.measure import measure as run_measure

        measured = run_measure(model, candidates, measure, train_file, budget=budget,
                               hidden_size=getattr(hf_config, "hidden_size", None), rows=measure_rows,
                               eval_rows=measure_eval_rows, seed=seed, progress=progress)
    if as_json:
        listed = [c.as_json(model, budget) for c in candidates]
        return json.dumps(listed if measured is None else {"candidates": listed, "measured": measured.as_json()},
                          indent=2)
    text = format_table(model, hf_config, candidates, tried, budget, labels, top)
    if measured is not None:
        from budgetlora.commands.measure import format_measurement

        text += "\n" + "\n".join(format_measurement(measured))
    return text


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
        + (f"top {len(shown)}" if len(shown) < len(candidates) else "all") + ", the linear head's first, then by score:",
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
