"""`budgetlora evaluate`: a finished run scored on a labelled file (accuracy, macro-F1, per-class
scores, confusion matrix), written to the run's eval/ folder."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from budgetlora.config import DataConfig
from budgetlora.core.files import atomic_write_json
from budgetlora.core.plots import plot_confusion
from budgetlora.data import load_file
from budgetlora.inference.calibration import calibration_summary, load_temperature, probabilities
from budgetlora.inference.runner import LoadedRun

log = logging.getLogger(__name__)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (sklearn)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(label_names)
        },
        "label_names": list(label_names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def data_name(path: Union[str, Path]) -> str:
    stem = Path(path).name
    for suffix in (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pkl", ".pickle"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "data"


def evaluate_run(
    run_dir: Union[str, Path],
    data: Union[str, Path],
    model: Optional[str] = None,
    batch_size: Optional[int] = None,
    max_samples: Optional[int] = None,
    quantize: bool = False,
    calibrate: bool = False,
) -> dict[str, Any]:
    """Score a finished run on a labelled file. Writes DIR/eval/<data name>.json (scores, per-class
    table, confusion matrix, calibration, a sample of predictions), <name>_confusion.png and
    <name>_errors.csv (the misclassified rows, most confident first).

    `calibrate`: first fit temperature scaling on the run's own validation split and store it in
    DIR/calibration.json; a stored temperature is used for the probabilities either way.
    """

    run = LoadedRun(run_dir, model=model, quantize=quantize)
    fitted = fit_run_calibration(run, batch_size) if calibrate else None
    temperature = fitted["temperature"] if fitted else load_temperature(run_dir)
    dcfg = run.cfg.data if run.cfg else DataConfig()
    textset = load_file(data, dcfg, require_labels=True, label_names=run.label_names)
    if max_samples:
        textset = textset.subset(range(min(max_samples, len(textset))))
    start = time.perf_counter()
    logits = run.logits(textset.texts, batch_size, progress=True)
    seconds = time.perf_counter() - start
    y_pred = logits.argmax(-1).tolist()
    report = classification_report(textset.labels, y_pred, run.label_names)
    report.update({"data": str(data), "run": str(run_dir), "quantized_int8": quantize, "eval_samples_per_second": len(y_pred) / max(seconds, 1e-9)})
    report["calibration"] = calibration_summary(logits, textset.labels, temperature)
    if fitted:
        report["calibration"]["fitted"] = fitted
    probs = probabilities(logits, temperature or 1.0)  # what `predict --probabilities` serves
    report["sample"] = prediction_sample(textset.texts, textset.labels, probs)
    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(exist_ok=True)
    name = data_name(data) + ("-int8" if quantize else "")
    report["errors"] = write_errors(out_dir / f"{name}_errors.csv", textset.texts, textset.labels, probs, run.label_names)
    report["errors_file"] = f"{name}_errors.csv"
    path = out_dir / f"{name}.json"
    atomic_write_json(path, report)
    try:
        plot_confusion(np.array(report["confusion_matrix"]), run.label_names, out_dir / f"{name}_confusion.png",
                       title=f"{name}: accuracy {report['accuracy']:.4f}")
    except Exception as e:  # the JSON is what matters; a plot failure must not lose it
        log.warning("could not draw the confusion matrix: %s", e)
    report["path"] = str(path)
    return report


def fit_run_calibration(run: LoadedRun, batch_size: Optional[int] = None) -> dict[str, Any]:
    """Fit temperature scaling on the validation rows the run itself was validated on (the run's
    config.yaml rebuilds them with data.prepare_splits), store it as RUN/calibration.json."""
    from budgetlora.core.files import atomic_write_json
    from budgetlora.data import prepare_splits
    from budgetlora.errors import RunDirError
    from budgetlora.inference.calibration import BINNING, CALIBRATION_FILE, ece, fit_temperature, nll, probabilities

    if run.cfg is None:
        raise RunDirError(f"{run.run_dir}: no config.yaml, so the run's validation split cannot be rebuilt "
                          "for --calibrate; calibrate a run trained by budgetlora train")
    d = run.cfg.data
    splits = prepare_splits(d, run.cfg.train.seed)
    if splits.label_names != run.label_names:
        raise RunDirError(f"{run.run_dir}: the validation split's classes {splits.label_names} are not the run's "
                          f"{run.label_names}; has the training file changed since the run?")
    logits = run.logits(splits.eval.texts, batch_size, progress=True)
    labels = splits.eval.labels
    t = fit_temperature(logits, labels)
    source = d.eval_file or f"{d.train_file or d.dataset} (val_fraction {d.val_fraction}, seed {run.cfg.train.seed})"
    fitted = {
        "temperature": t, "fitted_on": "validation split", "data": source, "rows": len(labels), "binning": BINNING,
        "ece_before": ece(probabilities(logits), labels), "ece_after": ece(probabilities(logits, t), labels),
        "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, t),
    }
    atomic_write_json(run.run_dir / CALIBRATION_FILE, fitted)
    return fitted


def prediction_sample(texts: Sequence[str], labels: Sequence[int], probs: np.ndarray, k: int = 12, seed: int = 0) -> list[dict[str, Any]]:
    """`k` rows drawn at random (seeded, so a report is repeatable) with every class's probability."""
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(len(texts), size=min(k, len(texts)), replace=False).tolist())
    return [{"row": i, "text": texts[i], "gold": int(labels[i]), "predicted": int(probs[i].argmax()),
             "probabilities": [round(float(p), 6) for p in probs[i]]} for i in rows]


def write_errors(path: Path, texts: Sequence[str], labels: Sequence[int], probs: np.ndarray, label_names: Sequence[str]) -> int:
    """The misclassified rows as CSV (row, text, gold, predicted, probability of the prediction),
    most confident first: the errors the model is surest of are the ones worth reading first.
    Returns how many there are."""
    import csv
    import io

    from budgetlora.core.files import atomic_write_text

    predicted = probs.argmax(-1)
    wrong = [i for i in range(len(texts)) if predicted[i] != labels[i]]
    wrong.sort(key=lambda i: (-probs[i, predicted[i]], i))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "text", "gold", "predicted", "probability"])
    for i in wrong:
        w.writerow([i, texts[i], label_names[labels[i]], label_names[predicted[i]], f"{probs[i, predicted[i]]:.6f}"])
    atomic_write_text(path, buf.getvalue())
    return len(wrong)
