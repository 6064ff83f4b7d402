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
) -> dict[str, Any]:
    """Score a finished run on a labelled file; writes DIR/eval/<data name>.json and a confusion-matrix PNG."""
    run = LoadedRun(run_dir, model=model, quantize=quantize)
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
    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(exist_ok=True)
    name = data_name(data) + ("-int8" if quantize else "")
    path = out_dir / f"{name}.json"
    atomic_write_json(path, report)
    try:
        plot_confusion(np.array(report["confusion_matrix"]), run.label_names, out_dir / f"{name}_confusion.png",
                       title=f"{name}: accuracy {report['accuracy']:.4f}")
    except Exception as e:  # the JSON is what matters; a plot failure must not lose it
        log.warning("could not draw the confusion matrix: %s", e)
    report["path"] = str(path)
    return report
