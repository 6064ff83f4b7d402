"""`budgetlora report RUN [RUN...] --output report.html`: one self-contained HTML page per set of
runs, the whole story of each: command and settings, budget breakdown, training and validation
curves, confusion matrix, per-class scores, calibration, the errors it is surest of, predictions
on a sample; with several runs, a comparison table and accuracy against trainable parameters.

Everything is read from the run folders (metrics.json, config.yaml, log.jsonl, eval/<name>.json
and <name>_errors.csv from `budgetlora evaluate`, calibration.json from `evaluate --calibrate`);
nothing is loaded or recomputed. The page needs no network when viewed: the plots are inlined as
base64 PNGs, the style sheet is inline, and there is no script. Every text that comes from a run
(texts, labels, paths, settings) is HTML-escaped, so a text containing `<script>` stays text.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from budgetlora.core.files import read_json_object
from budgetlora.errors import RunDirError

TOP_ERRORS = 20


@dataclass
class RunMaterial:
    """What one run folder holds for the report."""

    folder: Path
    metrics: dict[str, Any]
    config_yaml: str
    records: list[dict[str, Any]]
    eval_name: str
    evaluation: dict[str, Any]
    errors: Optional[list[dict[str, str]]]  # the top rows of <eval_name>_errors.csv; None: no such file
    calibration: Optional[dict[str, Any]]  # calibration.json; None: not calibrated
    other_evals: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what is not there yet, with the command that makes it

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    @property
    def label_names(self) -> list[str]:
        return list(self.evaluation.get("label_names") or self.metrics.get("label_names") or [])


def _evaluations(folder: Path) -> list[Path]:
    """eval/<name>.json reports of `budgetlora evaluate`, newest first."""
    found = [p for p in (folder / "eval").glob("*.json") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def read_run_material(run_dir: Union[str, Path], eval_name: Optional[str] = None, top_errors: int = TOP_ERRORS) -> RunMaterial:
    """A finished, evaluated run's material; RunDirError (one line, with the command to run) when
    the run has not finished or has not been evaluated yet."""
    from budgetlora.core.plots import read_log

    folder = Path(run_dir)
    if not (folder / "metrics.json").is_file():
        raise RunDirError(f"{run_dir}: not a finished budgetlora run (no metrics.json); train it first, or "
                          f"finish it with `budgetlora train --resume {run_dir}`")
    evals = _evaluations(folder)
    if eval_name is not None:
        chosen = [p for p in evals if p.stem == eval_name]
        if not chosen:
            have = ", ".join(p.stem for p in evals) or "none"
            raise RunDirError(f"{run_dir}: no evaluation named {eval_name!r} (have: {have}); "
                              f"run `budgetlora evaluate --run {run_dir} --data FILE` first")
        evals = chosen + [p for p in evals if p not in chosen]
    if not evals:
        raise RunDirError(f"{run_dir}: not evaluated yet (eval/ has no report), so there is no confusion matrix, "
                          f"calibration or error list to show; run `budgetlora evaluate --run {run_dir} "
                          "--data TEST_FILE --calibrate` first")
    evaluation = read_json_object(evals[0])
    if "confusion_matrix" not in evaluation:
        raise RunDirError(f"{evals[0]}: not an evaluation report of `budgetlora evaluate`")
    config_path = folder / "config.yaml"
    material = RunMaterial(
        folder=folder, metrics=read_json_object(folder / "metrics.json"),
        config_yaml=config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else "",
        records=read_log(folder / "log.jsonl") if (folder / "log.jsonl").is_file() else [],
        eval_name=evals[0].stem, evaluation=evaluation, errors=None,
        calibration=read_json_object(folder / "calibration.json") if (folder / "calibration.json").is_file() else None,
        other_evals=[p.stem for p in evals[1:]],
    )
    _add_missing(material, evals[0], top_errors)
    return material


def _add_missing(m: RunMaterial, eval_path: Path, top_errors: int) -> None:
    """Fill in the optional pieces and note each absent one with the command that makes it."""
    again = f"budgetlora evaluate --run {shlex.quote(str(m.folder))} --data {shlex.quote(str(m.evaluation.get('data', 'FILE')))}"
    errors_path = eval_path.parent / str(m.evaluation.get("errors_file") or f"{eval_path.stem}_errors.csv")
    if errors_path.is_file():
        with open(errors_path, newline="", encoding="utf-8", errors="replace") as f:
            m.errors = [row for _, row in zip(range(top_errors), csv.DictReader(f))]
    else:
        m.missing.append(f"the misclassified rows ({errors_path.name}): run `{again}`")
    if "calibration" not in m.evaluation:
        m.missing.append(f"calibration (ECE, NLL, reliability diagram) of {eval_path.stem}: run `{again} --calibrate`")
    elif m.calibration is None:
        m.missing.append(f"temperature scaling (calibration.json): run `{again} --calibrate`")
    if "sample" not in m.evaluation:
        m.missing.append(f"predictions on a sample: run `{again}`")
    if not m.records:
        m.missing.append("training curves: the run has no log.jsonl")


# ---------------------------------------------------------------------------------------------
# HTML. `_e` escapes every value that comes from a run; markup is only ever written here.
# ---------------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1.2em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{margin-bottom:.3em}section.run{border-top:4px solid #4a78a8;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:.6em;overflow:auto;max-height:22em;font-size:.85em;white-space:pre-wrap;word-break:break-word}
img{max-width:100%;height:auto;border:1px solid #eee}.grid{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;margin:.6em 0}
.muted{color:#666;font-size:.9em}td.text{max-width:38em;word-break:break-word}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] = (),
           wide: Optional[int] = None) -> str:
    """A table; `numeric` columns right-aligned and formatted, column `wide` wrapped as long text."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            if i < len(numeric) and numeric[i]:
                cells.append(f'<td class="num">{_num(v)}</td>')
            else:
                cells.append(f'<td class="text">{_e(v)}</td>' if i == wide else f"<td>{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _png(draw: Callable[..., None], *args: Any, alt: str, **kwargs: Any) -> str:
    """An <img> holding the figure `draw(*args, buffer, **kwargs)` draws, inlined as base64."""
    buf = io.BytesIO()
    draw(*args, buf, **kwargs)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _section(kind: str, title: str, body: str) -> str:
    return f'<section class="{kind}"><h3>{_e(title)}</h3>{body}</section>'


def _notes(lines: Sequence[str]) -> str:
    return "".join(f'<div class="note">{_e(line)}</div>' for line in lines)


def _model_name(model: Any) -> str:
    text = str(model or "-")
    return Path(text).name if text.startswith(("/", ".", "~")) else text


def _settings(m: RunMaterial) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(m.config_yaml) if m.config_yaml else {}
    except yaml.YAMLError:
        data = {}
    return data if isinstance(data, dict) else {}


def _command_section(m: RunMaterial) -> str:
    command = m.metrics.get("command") or "(not recorded)"
    body = f"<p>Trained with:</p><pre>{_e(command)}</pre>"
    if m.config_yaml:
        body += f"<p>Resolved settings (config.yaml):</p><pre>{_e(m.config_yaml)}</pre>"
    return _section("command", "Command and settings", body)


def _budget_section(m: RunMaterial) -> str:
    breakdown = m.metrics.get("budget_breakdown") or {}
    budget = m.metrics.get("budget")
    total = breakdown.get("total", m.metrics.get("trainable_params"))
    rows = [(k, v, _percent(v, budget)) for k, v in breakdown.items() if k != "total" and v]
    rows.append(("total", total, _percent(total, budget)))
    body = (f"<p>{_num(m.metrics.get('trainable_params'))} trainable parameters, strictly under the budget of "
            f"{_num(budget)}; {_num(m.metrics.get('total_params'))} parameters in all.</p>"
            + _table(["kind", "parameters", "% of budget"], [(k, v, p) for k, v, p in rows], numeric=[False, True, True]))
    return _section("budget", "Budget breakdown", body)


def _percent(part: Any, whole: Any) -> str:
    return f"{100.0 * part / whole:.3g}%" if isinstance(part, (int, float)) and whole else "-"


def _targets(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _curves_section(m: RunMaterial) -> str:
    from budgetlora.core.plots import plot_learning_curves

    if not m.records:
        return _section("curves", "Training and validation curves", _notes(["no log.jsonl in the run folder"]))
    best = m.metrics.get("best_eval_accuracy")
    body = (f"<p>Best validation accuracy {_num(best)} at step {_num(m.metrics.get('best_step'))} of "
            f"{_num(m.metrics.get('steps'))} ({_num(m.metrics.get('train_rows'))} training rows, "
            f"{_num(m.metrics.get('eval_rows'))} validation rows; {_num(m.metrics.get('train_samples_per_second'), 1)} "
            "samples/s).</p>"
            + _png(plot_learning_curves, m.records, alt="training and validation curves", title=m.name))
    return _section("curves", "Training and validation curves", body)


def _evaluation_section(m: RunMaterial) -> str:
    import numpy as np

    from budgetlora.core.plots import plot_confusion

    ev, names = m.evaluation, m.label_names
    per_class = ev.get("per_class") or {}
    rows = [(name, s.get("precision"), s.get("recall"), s.get("f1"), s.get("support")) for name, s in per_class.items()]
    others = f" Other evaluations in eval/: {', '.join(m.other_evals)}." if m.other_evals else ""
    body = (f"<p>On {_e(ev.get('data', m.eval_name))} ({_num(ev.get('n'))} rows): accuracy "
            f"<b>{_num(ev.get('accuracy'))}</b>, macro-F1 <b>{_num(ev.get('macro_f1'))}</b>.{_e(others)}</p>"
            '<div class="grid"><div>'
            + _png(plot_confusion, np.array(ev["confusion_matrix"]), names, alt="confusion matrix",
                   title=f"{m.eval_name}: accuracy {ev.get('accuracy', 0):.4f}")
            + "</div><div><h4>Per class</h4>"
            + _table(["class", "precision", "recall", "F1", "rows"], rows, numeric=[False, True, True, True, True])
            + "</div></div>")
    return _section("evaluation", f"Evaluation: {m.eval_name}", body)


def _calibration_section(m: RunMaterial) -> str:
    from budgetlora.core.plots import plot_reliability

    cal = m.evaluation.get("calibration")
    if not cal:
        return _section("calibration", "Calibration", _notes([x for x in m.missing if x.startswith("calibration")]))
    scaled = "temperature" in cal
    rows = [("softmax", cal["ece"], cal["nll"])]
    if scaled:
        rows.append((f"temperature-scaled (T = {cal['temperature']:.4f})", cal["ece_calibrated"], cal["nll_calibrated"]))
    body = (f"<p>Expected calibration error (ECE, {_e(cal.get('binning', ''))}) and negative log-likelihood "
            f"(NLL) on {_e(m.eval_name)}; lower is better for both.</p>"
            + _table(["probabilities", "ECE", "NLL"], rows, numeric=[False, True, True]))
    fit = m.calibration
    if fit:
        body += (f"<p>Temperature T = {_num(fit.get('temperature'))} fitted on the run's own "
                 f"{_e(fit.get('fitted_on', 'validation split'))} ({_num(fit.get('rows'))} rows of {_e(fit.get('data', '?'))}): "
                 f"ECE {_num(fit.get('ece_before'))} → {_num(fit.get('ece_after'))}, NLL {_num(fit.get('nll_before'))} → "
                 f"{_num(fit.get('nll_after'))} there. <code>predict --probabilities</code> uses it.</p>")
    body += _notes([x for x in m.missing if "calibration" in x])
    body += _png(plot_reliability, cal["reliability"], alt="reliability diagram", title=f"reliability on {m.eval_name}",
                 calibrated=cal.get("reliability_calibrated"))
    return _section("calibration", "Calibration", body)


def _errors_section(m: RunMaterial) -> str:
    title = "Errors the model is surest of"
    if m.errors is None:
        return _section("errors", title, _notes([x for x in m.missing if "misclassified" in x]))
    total = m.evaluation.get("errors", len(m.errors))
    rows = [(r.get("row", ""), r.get("text", ""), r.get("gold", ""), r.get("predicted", ""), _prob(r.get("probability")))
            for r in m.errors]
    body = (f"<p>{_num(total)} of {_num(m.evaluation.get('n'))} rows misclassified; the {len(rows)} with the highest "
            f"probability on the wrong class (all in eval/{_e(m.evaluation.get('errors_file', ''))}):</p>"
            + _table(["row", "text", "gold", "predicted", "probability"], rows, numeric=[False, False, False, False, True],
                     wide=1))
    return _section("errors", title, body)


def _prob(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _sample_section(m: RunMaterial) -> str:
    from budgetlora.core.plots import plot_prediction_sample

    sample = m.evaluation.get("sample")
    if not sample:
        return _section("sample", "Predictions on a sample", _notes([x for x in m.missing if "sample" in x]))
    body = ("<p>Rows drawn at random (seeded) from the evaluation data: one bar per class, its probability; "
            "the gold class in bold, the prediction green when right and red when wrong.</p>"
            + _png(plot_prediction_sample, sample, m.label_names, alt="predictions on a sample"))
    return _section("sample", "Predictions on a sample", body)


def _run_section(m: RunMaterial, index: int) -> str:
    lora = (_settings(m).get("lora") or {})
    summary = (f"{_e(_model_name(m.metrics.get('model')))}, {_e(m.metrics.get('head', '-'))} head, LoRA r={_e(lora.get('r', '-'))} "
               f"on {_e(_targets(lora.get('target_modules', '-')))}; {_num(m.metrics.get('trainable_params'))} trainable parameters")
    parts = [f'<section class="run" id="run-{index}"><h2>{_e(m.name)}</h2><p class="muted">{summary}<br>'
             f"folder {_e(m.folder)}</p>", _notes([f"missing: {x}" for x in m.missing])]
    for build in (_command_section, _budget_section, _curves_section, _evaluation_section, _calibration_section,
                  _errors_section, _sample_section):
        parts.append(build(m))
    return "".join(parts) + "</section>"


def _comparison_section(runs: Sequence[RunMaterial]) -> str:
    from budgetlora.core.plots import plot_accuracy_vs_params

    rows = []
    for m in runs:
        cal = m.evaluation.get("calibration") or {}
        lora = _settings(m).get("lora") or {}
        runtime = m.metrics.get("train_runtime_s")
        rows.append((m.name, _model_name(m.metrics.get("model")), lora.get("r", "-"), _targets(lora.get("target_modules", "-")),
                     m.metrics.get("trainable_params"), m.metrics.get("best_eval_accuracy"), m.eval_name,
                     m.evaluation.get("accuracy"), m.evaluation.get("macro_f1"), cal.get("ece"), cal.get("ece_calibrated"),
                     f"{runtime:.1f}" if isinstance(runtime, (int, float)) else "-"))
    header = ["run", "model", "r", "targets", "trainable", "val acc", "evaluated on", "accuracy", "macro-F1",
              "ECE", "ECE (T)", "train s"]
    numeric = [False, False, False, False, True, True, False, True, True, True, True, True]
    same_data = len({m.eval_name for m in runs}) == 1
    points = [(m.name, int(m.metrics.get("trainable_params") or 0), float(m.evaluation.get("accuracy") or 0)) for m in runs]
    ylabel = f"accuracy on {runs[0].eval_name}" if same_data else "accuracy (each run's own evaluation data)"
    budgets = {m.metrics.get("budget") for m in runs}
    body = (_table(header, rows, numeric)
            + ("" if same_data else _notes(["the runs were evaluated on different data; their accuracies are not comparable"]))
            + _png(plot_accuracy_vs_params, points, alt="accuracy against trainable parameters", ylabel=ylabel,
                   budget=budgets.pop() if len(budgets) == 1 else None))
    return f'<section class="comparison"><h2>Comparison</h2>{body}</section>'


def build_report(runs: Sequence[RunMaterial]) -> str:
    """The whole page, as text."""
    names = ", ".join(m.name for m in runs)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>budgetlora report: {_e(names)}</title><style>{STYLE}</style></head><body>",
             f"<h1>budgetlora report</h1><p class=\"muted\">{len(runs)} run{'s' if len(runs) > 1 else ''}: {_e(names)}</p>"]
    if len(runs) > 1:
        parts.append(_comparison_section(runs))
    parts += [_run_section(m, i) for i, m in enumerate(runs, 1)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def report_command(runs: Sequence[Union[str, Path]], output: Union[str, Path], *, overwrite: bool = False,
                   eval_name: Optional[str] = None, top_errors: int = TOP_ERRORS) -> dict[str, Any]:
    """Write the report of `runs` to `output`; refuses to replace an existing file unless `overwrite`.
    Every run is read before anything is written, so a bad run folder leaves no half page."""
    from budgetlora.core.files import atomic_write_text

    out = Path(output)
    if out.exists() and not overwrite:
        raise RunDirError(f"{out}: exists; pass --overwrite to replace it, or choose another --output")
    if out.exists() and not out.is_file():
        raise RunDirError(f"{out}: exists and is not a file; choose another --output")
    if not out.parent.is_dir():
        raise RunDirError(f"{out.parent}: output folder does not exist")
    if top_errors < 0:
        raise RunDirError(f"--errors: must be >= 0, got {top_errors}")
    materials = [read_run_material(r, eval_name=eval_name, top_errors=top_errors) for r in runs]
    page = build_report(materials)
    atomic_write_text(out, page)
    return {"output": str(out), "runs": len(materials), "bytes": len(page.encode("utf-8")),
            "missing": {m.name: m.missing for m in materials if m.missing}}
