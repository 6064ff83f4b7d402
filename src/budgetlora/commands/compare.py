"""`budgetlora compare RUN...`: finished runs side by side, as a table, JSON and a bar plot.

Everything is read from the run folders: metrics.json (written when training finishes) and the
eval/<data name>.json reports of `budgetlora evaluate`; a search's study folder stands for all its
complete trials (search.json). Nothing is loaded or recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from budgetlora.errors import RunDirError
from budgetlora.training.outputs import read_metrics_file


def read_run(run_dir: Union[str, Path]) -> dict[str, Any]:
    """One row: the run's settings and scores; RunDirError when it is not a finished run."""
    folder = Path(run_dir)
    m = read_metrics_file(folder)
    evals: dict[str, float] = {}
    for report in sorted((folder / "eval").glob("*.json")):
        try:
            acc = json.loads(report.read_text(encoding="utf-8")).get("accuracy")
        except (OSError, ValueError):
            continue
        if isinstance(acc, (int, float)):
            evals[report.stem] = float(acc)
    teacher = None
    cfg_path = folder / "config.yaml"
    if cfg_path.is_file():
        import yaml

        try:
            teacher = ((yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}).get("train") or {}).get("teacher")
        except (OSError, yaml.YAMLError):
            teacher = None
    return {
        "run": str(run_dir),
        "model": m.get("model"),
        "head": m.get("head"),
        "trainable_params": m.get("trainable_params"),
        "best_eval_accuracy": m.get("best_eval_accuracy"),
        "eval_accuracy": evals,
        "train_runtime_s": m.get("train_runtime_s"),
        "train_samples_per_second": m.get("train_samples_per_second"),
        "teacher": teacher,
    }


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _model_name(model: Optional[str]) -> str:
    if not model:
        return "-"
    p = Path(model)
    return p.name if ("/" in model and p.expanduser().exists()) or model.startswith(("/", ".", "~")) else model


def format_table(rows: list[dict[str, Any]]) -> str:
    eval_names = sorted({name for r in rows for name in r["eval_accuracy"]})
    header = ["run", "model", "head", "trainable", "val acc", *eval_names, "train time", "samples/s"]
    if any(r["teacher"] for r in rows):
        header.append("teacher")
    table = [header]
    for r in rows:
        acc = r["best_eval_accuracy"]
        line = [
            r["run"], _model_name(r["model"]), r["head"] or "-",
            f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "-",
            f"{acc:.4f}" if isinstance(acc, (int, float)) else "-",
            *[f"{r['eval_accuracy'][n]:.4f}" if n in r["eval_accuracy"] else "-" for n in eval_names],
            _duration(r["train_runtime_s"]),
            f"{r['train_samples_per_second']:.1f}" if r["train_samples_per_second"] is not None else "-",
        ]
        if len(header) > len(line):
            line.append(r["teacher"] or "-")
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    numeric = {3, 4, *range(5, 5 + len(eval_names)), 5 + len(eval_names), 6 + len(eval_names)}
    out = []
    for k, row in enumerate(table):
        cells = [str(c).rjust(w) if i in numeric else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    if eval_names:
        out.append("val acc: best validation accuracy during training; " + ", ".join(eval_names)
                   + ": accuracy from `budgetlora evaluate` (eval/<name>.json)")
    return "\n".join(out)


def plot_comparison(rows: list[dict[str, Any]], out_path: Union[str, Path]) -> None:
    """Horizontal bars of best validation accuracy, each annotated with its trainable parameters."""
    from budgetlora.core.plots import pyplot

    plt = pyplot()
    names = [r["run"] for r in rows]
    accs = [float(r["best_eval_accuracy"] or 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6))
    bars = ax.barh(range(len(rows)), accs, color="tab:blue")
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # first run on top, as in the table
    lo = max(0.0, min(accs) - 0.1) if accs else 0.0
    ax.set_xlim(lo, 1.0)
    for bar, r, acc in zip(bars, rows, accs):
        params = r["trainable_params"]
        text = f"{acc:.4f}" + (f"  ({params:,} params)" if params is not None else "")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text, va="center", fontsize=8)
    ax.set_xlabel("best validation accuracy")
    ax.set_title("budgetlora compare")
    fig.tight_layout()
    fig.savefig(str(out_path), dpi=120)
    plt.close(fig)


def read_study(study_dir: Union[str, Path]) -> list[dict[str, Any]]:
    """One row per complete trial of a `budgetlora search` study, from its search.json, which lists
    every worker's trials: a trial trained on another machine, whose folder is not here, is shown
    from what its worker recorded in the study."""
    path = Path(study_dir) / "search.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        trials = summary["trials"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{path}: unreadable ({e})") from None
    rows = []
    for t in trials:
        if t.get("state") != "COMPLETE":
            continue
        run_dir = Path(t.get("run_dir") or "")
        if (run_dir / "metrics.json").is_file():
            rows.append(read_run(run_dir))
            continue
        rows.append({
            "run": f"{run_dir.name or 'trial-' + str(t.get('number'))} ({t.get('worker') or 'another worker'})",
            "model": t.get("model"), "head": t.get("head"), "trainable_params": t.get("trainable_params"),
            "best_eval_accuracy": t.get("value"), "eval_accuracy": {}, "train_runtime_s": t.get("train_runtime_s"),
            "train_samples_per_second": t.get("train_samples_per_second"), "teacher": None,
        })
    return rows


def compare(runs: Sequence[Union[str, Path]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the finished runs (a search's study folder gives one per complete trial), and one
    line per folder that was skipped."""
    rows, skipped = [], []
    for run in runs:
        try:
            folder = Path(run)
            if (folder / "search.json").is_file() and not (folder / "metrics.json").is_file():
                rows.extend(read_study(folder))
            else:
                rows.append(read_run(run))
        except RunDirError as e:
            skipped.append(str(e))
    return rows, skipped


def compare_command(runs: Sequence[str], output: Optional[str] = "compare.png", as_json: bool = False) -> str:
    rows, skipped = compare(runs)
    for line in skipped:
        print(f"budgetlora compare: skipping {line}", file=sys.stderr)
    if not rows:
        raise RunDirError("compare: none of the folders is a finished run")
    if output:
        plot_comparison(rows, output)
    if as_json:
        return json.dumps({"runs": rows, "plot": output}, indent=2)
    text = format_table(rows)
    return text + (f"\nplot: {output}" if output else "")
