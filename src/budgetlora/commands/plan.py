"""`budgetlora plan`: the adapter configurations that fit a budget, best first (the planner itself
is `budget.planner`, which `train` uses too), `--explain` for one configuration's count, and
`--measure K`, which trains the first K briefly and ranks them by validation accuracy beside the
planner's ranking (commands.measure).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from typing import Any, Optional

from budgetlora.budget import measured
from budgetlora.budget import Analysis, NeedsMeta, analyse, check_budget, describe_model, estimate, load_config_only
from budgetlora.budget.planner import MAX_RANK, RANK_HALF_CREDIT, SIZES, WHOLE_MODEL, Candidate, plan
from budgetlora.commands.measure import MeasureSettings, Progress, format_measurement
from budgetlora.commands.measure import measure as run_measure
from budgetlora.config import DEFAULT_BUDGET, RunConfig, resolved_method
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
    methods: Optional[str] = None,
    measure: int = 0,
    measure_settings: Optional[MeasureSettings] = None,
    progress: Optional[Progress] = None,
) -> str:
    """Text (or JSON) for `budgetlora plan`; `methods`: a comma-separated subset of PLAN_METHODS.
    With `measure` K > 0 the first K candidates are also trained briefly and ranked by validation
    accuracy beside the planner's ranking (commands.measure; `measure_settings` says on what)."""
    if labels < 1:
        raise ConfigError(f"labels: need at least one class, got {labels}")
    if measure and measure_settings is None:
        raise ConfigError("plan --measure: give --train-file FILE (the model folder must hold weights too)")
    hf_config = load_config_only(model, labels)
    if explain is not None:
        return explain_flags(model, hf_config, explain, budget, labels)
    budget = DEFAULT_BUDGET if budget is None else budget
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    candidates, tried = plan(hf_config, budget, labels, chosen)
    measured = run_measure(model, candidates, measure, budget, measure_settings, progress) if measure else None
    if as_json:
        listed = [c.as_json(model, budget) for c in candidates]
        return json.dumps(listed if measured is None else {"candidates": listed, "measured": measured.as_json()},
                          indent=2)
    text = format_table(model, hf_config, candidates, tried, budget, labels, top)
    return text if measured is None else "\n".join([text, *format_measurement(measured)])


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
    found = measured.shipped()
    near = found.nearest_budget(budget)
    rows = [("#", "trainable", "budget", "method", "head", "targets", "layers", "size", "score", "measured")]
    for i, c in enumerate(shown, 1):
        acc = found.accuracy_of(c.method, budget)
        rows.append((str(i), f"{c.trainable_params:,}", _share(c.trainable_params, budget), c.method, c.head,
                     c.targets_text, _layers_text(c.layers), c.size_text, f"{c.score:.3f}",
                     "-" if acc is None else f"{acc:.4f}"))
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    right = {0, 1, 2, 8, 9}

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    out = [
        head_line,
        f"budget: fewer than {budget:,} trainable parameters; {len(candidates)} of {tried} placements fit "
        f"(each at the largest size that fits: r <= {MAX_RANK}, VeRA r <= {SIZES['vera'][1]}, FourierFT "
        f"n <= {SIZES['fourierft'][1]}, tokens <= {SIZES['prompt'][1]}); "
        + (f"top {len(shown)}" if len(shown) < len(candidates) else "all")
        + ", the linear head's first, methods measured clearly worse last, then by score:",
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
        "adapted (all-linear = 1); for methods other than LoRA/DoRA, r is the LoRA rank their adapter "
        "parameters would buy on the same modules (a prior, not a measurement: docs/METHODS.md); "
        "rslora counts as lora; see docs/BUDGET.md",
    ]
    if near is not None:
        out.append(f"measured = validation accuracy of the method's first candidate in the equal-budget comparison "
                   f"at {near:,} parameters ({found.setup}); a method {measured.CLEARLY_WORSE * 100:g} point or "
                   "more below the best there is listed after the others (docs/METHODS.md)")
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
    method = resolved_method(run)
    if method in WHOLE_MODEL:
        targets = f"- ({WHOLE_MODEL[method]})"
    lines.append(
        f"configuration: method {method}{_method_options(run, method)}, head {run.model.head}, target_modules "
        f"{targets}, layers {_layers_text(lora.layers or None)}, bias {lora.bias}"
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
    if detail is not None and detail.adapted:
        lines.append(f"{'LoRA' if method in ('lora', 'rslora', 'dora') else method} on {len(detail.adapted)} modules:")
        lines += _adapted_lines(inv, detail)
    if detail is not None:
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


def _method_options(run: RunConfig, method: str) -> str:
    """The options that size the method, for the configuration line."""
    lora, a = run.lora, run.adapter
    sized = {
        "lora": f"r {lora.r}, alpha {lora.lora_alpha:g}", "dora": f"r {lora.r}, alpha {lora.lora_alpha:g}",
        "rslora": f"r {lora.r}, alpha {lora.lora_alpha:g}", "lokr": f"r {lora.r}, alpha {lora.lora_alpha:g}, "
        f"decompose_factor {a.lokr_decompose_factor}", "loha": f"r {lora.r}, alpha {lora.lora_alpha:g}",
        "adalora": f"init_r {a.adalora_init_r}, target_r {a.adalora_target_r}", "vera": f"r {a.vera_r}",
        "fourierft": f"n_frequency {a.fourierft_n_frequency}", "prompt": f"{a.num_virtual_tokens} virtual tokens",
        "ia3": "feedforward " + (",".join(a.ia3_feedforward_modules) or "none"),
    }
    return f" ({sized[method]})" if method in sized else ""


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
        rows.append(f"  {_grouped(name, layers)}  {i}->{o}" + (f"  r={r}" if r else ""))
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
