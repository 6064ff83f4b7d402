"""From the two pipelines' results to the report: rates and shares of the machine's peak, the
paired ratios (b)/(a), their medians over repeats, the targets, and the table a person reads."""

from __future__ import annotations

import statistics
from typing import Any, Optional

PIPELINES = ("reference", "budgetlora")

# Each pair's own figures, kept in the report beside the medians.
PAIR_FIGURES = ("train_samples_per_second", "train_runtime_s", "eval_samples_per_second", "eval_runtime_s",
                "eval_accuracy", "peak_rss_mb")


def _share(flops_per_s: Optional[float], peak: Optional[float]) -> Optional[float]:
    return flops_per_s / peak if flops_per_s and peak else None


def _ratio(b: Optional[float], a: Optional[float]) -> Optional[float]:
    return b / a if a and b is not None else None


def add_rates(r: dict[str, Any], peaks: dict[str, Any]) -> None:
    """Add a pipeline's useful FLOP/s and their shares of the bf16 and fp32 peaks to its result."""
    r["train_useful_flops_per_second"] = r["train_useful_flops"] / r["train_runtime_s"]
    r["eval_useful_flops_per_second"] = r["eval_useful_flops"] / r["eval_runtime_s"]
    for what in ("train", "eval"):
        for dt in ("bf16", "fp32"):
            r[f"{what}_share_of_{dt}_peak"] = _share(r[f"{what}_useful_flops_per_second"], peaks[f"{dt}_flops_per_second"])


def pair_ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Optional[float]]:
    """(b)/(a) for the figures the targets and the table use, and the accuracy difference."""
    return {
        "train_samples_per_second": _ratio(b["train_samples_per_second"], a["train_samples_per_second"]),
        "train_tokens_per_second": _ratio(b["train_tokens_per_second"], a["train_tokens_per_second"]),
        "train_useful_flops_per_second": _ratio(b["train_useful_flops_per_second"], a["train_useful_flops_per_second"]),
        "eval_samples_per_second": _ratio(b["eval_samples_per_second"], a["eval_samples_per_second"]),
        "peak_rss": _ratio(b["peak_rss_mb"], a["peak_rss_mb"]),
        "peak_gpu_allocated": _ratio(b.get("peak_gpu_allocated_mb"), a.get("peak_gpu_allocated_mb")),
        "eval_accuracy_difference": b["eval_accuracy"] - a["eval_accuracy"],
    }


def _median_or_first(values: list[Any]) -> Any:
    # Figures that differ between repeats (rates, times, memory) take their median; the rest
    # (settings, counts, accuracies of a seeded run) are the same in every repeat and stay as they are.
    if all(v == values[0] for v in values):
        return values[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    return values[0]


def combine_pairs(pairs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(reference, budgetlora, ratios) over the repeats: one pair as it is; several, per-field
    medians of each pipeline and the medians of the paired ratios (None where any pair has none)."""
    if len(pairs) == 1:
        return pairs[0]["reference"], pairs[0]["budgetlora"], pairs[0]["ratios"]
    a, b = ({k: _median_or_first([p[name].get(k) for p in pairs]) for k in pairs[0][name]} for name in PIPELINES)
    ratios = {}
    for k in pairs[0]["ratios"]:
        values = [p["ratios"][k] for p in pairs]
        ratios[k] = None if any(v is None for v in values) else statistics.median(values)
    return a, b, ratios


def combine_time_to_accuracy(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The time-to-accuracy figures over the repeats: one pair's as they are; several, per-field
    medians (the ratio: the median of the paired ratios; None where a pair never got there)."""
    runs = [p["time_to_accuracy"] for p in pairs]
    if len(runs) == 1:
        return runs[0]
    out = {}
    for k in runs[0]:
        values = [r[k] for r in runs]
        out[k] = None if any(v is None for v in values) else _median_or_first(values)
    return out


def targets(a: dict[str, Any], b: dict[str, Any], ratios: dict[str, Any],
            tta: Optional[dict[str, Any]] = None) -> dict[str, bool]:
    """The issue's targets for budgetlora (b) against the notebooks' pipeline (a)."""
    tta_targets = {} if tta is None else {
        "time_to_accuracy_ratio_at_least_20": bool(tta["ratio"] and tta["ratio"] >= 20),
        "defaults_final_accuracy_at_least_5_points_higher": tta["final_accuracy_difference"] >= 0.05,
    }
    return {**tta_targets,
        "train_samples_per_second_ratio_at_least_8": bool(ratios["train_samples_per_second"] and ratios["train_samples_per_second"] >= 8),
        "predict_vs_reference_eval_ratio_at_least_6": bool(ratios["eval_samples_per_second"] and ratios["eval_samples_per_second"] >= 6),
        "accuracy_not_lower": b["eval_accuracy"] >= a["eval_accuracy"],
        "same_samples": a["train_samples"] == b["train_samples"],
        "both_under_budget": bool(a["under_budget"] and b["under_budget"]),
    }


def pair_summaries(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pair's order, folder, ratios and own figures (PAIR_FIGURES), for the report."""
    return [{"order": p["order"], "output_dir": p["output_dir"], "ratios": p["ratios"],
             "time_to_accuracy": p.get("time_to_accuracy"), **{name: {k: p[name][k] for k in PAIR_FIGURES} for name in PIPELINES}} for p in pairs]


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def _table_rows(a: dict[str, Any], b: dict[str, Any], r: dict[str, Any]) -> list[tuple[str, Any, Any, Any, str]]:
    """(name, (a), (b), (b)/(a) or None, format) for each line of the table."""
    rows = [
        ("precision", a["precision"], b["precision"], None, "s"),
        ("attention kernel", a.get("attention"), b.get("attention"), None, "s"),
        ("encoder dropout", a.get("encoder_dropout"), b.get("encoder_dropout"), None, "g"),
        ("trainable params", a["trainable_params"], b["trainable_params"], None, ",d"),
        ("samples trained", a["train_samples"], b["train_samples"], None, ",d"),
        ("train samples/s", a["train_samples_per_second"], b["train_samples_per_second"], r["train_samples_per_second"], ".2f"),
        ("train real tokens/s", a["train_tokens_per_second"], b["train_tokens_per_second"], r["train_tokens_per_second"], ",.0f"),
        ("train executed tokens/s", a["train_executed_tokens_per_second"], b["train_executed_tokens_per_second"], None, ",.0f"),
        ("train useful GFLOP/s", a["train_useful_flops_per_second"] / 1e9, b["train_useful_flops_per_second"] / 1e9,
         r["train_useful_flops_per_second"], ".1f"),
        ("  share of bf16 peak", a["train_share_of_bf16_peak"], b["train_share_of_bf16_peak"], None, ".1%"),
        ("  share of fp32 peak", a["train_share_of_fp32_peak"], b["train_share_of_fp32_peak"], None, ".1%"),
        ("eval samples/s", a["eval_samples_per_second"], b["eval_samples_per_second"], r["eval_samples_per_second"], ".1f"),
        ("validation accuracy", a["eval_accuracy"], b["eval_accuracy"], None, ".4f"),
        ("peak RSS MiB", a["peak_rss_mb"], b["peak_rss_mb"], r["peak_rss"], ",.0f"),
    ]
    if a.get("peak_gpu_allocated_mb") is not None:
        rows.append(("peak GPU allocated MiB", a["peak_gpu_allocated_mb"], b["peak_gpu_allocated_mb"], r["peak_gpu_allocated"], ",.0f"))
    return rows


def _repeat_lines(rep: dict[str, Any]) -> list[str]:
    """One line per repeat (with several): its ratios and both pipelines' rates."""
    pairs = rep.get("pairs", [])
    if len(pairs) <= 1:
        return []
    out = [f"{len(pairs)} paired repeats, the order alternating; the table: {rep['ratios_are']}"]
    for k, p in enumerate(pairs, 1):
        pr = p["ratios"]
        out.append(f"  repeat {k} ({p['order'][0]} first): train {_fmt(pr['train_samples_per_second'], '.2f')}x, "
                   f"eval {_fmt(pr['eval_samples_per_second'], '.2f')}x "
                   f"(train {_fmt(p['reference']['train_samples_per_second'], '.2f')} -> "
                   f"{_fmt(p['budgetlora']['train_samples_per_second'], '.2f')} samples/s, "
                   f"eval {_fmt(p['reference']['eval_samples_per_second'], '.1f')} -> "
                   f"{_fmt(p['budgetlora']['eval_samples_per_second'], '.1f')} samples/s)")
    return out + [""]


def format_report(rep: dict[str, Any]) -> str:
    """The report as a person reads it: the machine, the repeats, the side-by-side table, the targets."""
    a, b, r = rep["reference"], rep["budgetlora"], rep["ratios"]
    rows = _table_rows(a, b, r)
    w = max(len(x[0]) for x in rows)
    out = [f"budgetlora bench  {rep['date']}  {rep['machine']}",
           f"model {rep['model']}; {rep['samples']} training rows, {rep['eval_rows']} validation rows, seed {rep['seed']}",
           f"matmul peak (n={rep['peaks']['matmul_n']}): bf16 {rep['peaks']['bf16_flops_per_second'] / 1e9:.0f} GFLOP/s, "
           f"fp32 {rep['peaks']['fp32_flops_per_second'] / 1e9:.0f} GFLOP/s",
           ""]
    out += _repeat_lines(rep)
    out.append(f"{'':<{w}}  {'(a) reference':>15}  {'(b) budgetlora':>15}  {'(b)/(a)':>8}")
    for name, va, vb, ratio, spec in rows:
        out.append(f"{name:<{w}}  {_fmt(va, spec):>15}  {_fmt(vb, spec):>15}  {_fmt(ratio, '.2f') + ('x' if ratio else ''):>8}")
    out += _tta_lines(rep)
    out += ["",
            f"(a) eval: {a['eval_timed']}; (b) eval: {b['eval_timed']}",
            f"(b) predict accuracy {b['predict_accuracy']:.4f}, predict peak RSS {_fmt(b['predict_peak_rss_mb'], ',.0f')} MiB",
            f"accuracy (b)-(a): {r['eval_accuracy_difference']:+.4f}",
            "targets: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rep["targets"].items()),
            f"outputs: {rep['output_dir']}"]
    return "\n".join(out)


def _tta_lines(rep: dict[str, Any]) -> list[str]:
    """Time to the notebook's final accuracy, whole commands from their start."""
    t, ours = rep.get("time_to_accuracy"), rep.get("defaults_command")
    if not t or not ours:
        return []
    chosen = ours["chosen"]
    targets_text = chosen["target_modules"] if isinstance(chosen["target_modules"], str) else ",".join(chosen["target_modules"])
    reached = (f"{t['budgetlora_seconds']:.1f} s (at step {t['budgetlora_step']})" if t["budgetlora_seconds"] is not None
               else "not reached")
    return ["",
            f"time to the notebook's final accuracy ({t['target_accuracy']:.4f}), whole commands from their start:",
            f"  (a) notebook pipeline {t['reference_seconds']:.1f} s (its one evaluation, after the epoch)",
            f"  `budgetlora train` with its defaults {reached}, evaluating every {ours['eval_every']} steps: "
            f"{_fmt(t['ratio'], '.1f')}{'x' if t['ratio'] else ''}",
            f"  final accuracy (a) {t['reference_final_accuracy']:.4f}, defaults {t['budgetlora_final_accuracy']:.4f} "
            f"({100 * t['final_accuracy_difference']:+.1f} points); whole command {ours['whole_command_s']:.1f} s",
            f"  the defaults chose: {chosen['head']} head, {chosen['method']} r={chosen['r']} alpha={chosen['lora_alpha']:g} on "
            f"{targets_text}, lr {chosen['lr']:g}, {ours['trainable_params']:,} trainable; {ours['command']}"]
