"""Prediction: a Kaggle-style submission (`ID,Label`) for a file, or the label of one text."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Optional, Union

from budgetlora.errors import RunDirError


def predict_file(
    run_dir: Union[str, Path],
    input_path: Union[str, Path],
    output_path: Union[str, Path],
    *,
    probabilities: bool = False,
    model: Optional[str] = None,
    batch_size: Optional[int] = None,
    quantize: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """One row per input row, in input order. ID = the input's id column, else the row index.
    The probabilities are temperature-scaled when the run has a calibration.json (`evaluate
    --calibrate`); the labels are the same either way."""
    from budgetlora.config import DataConfig
    from budgetlora.data import load_file
    from budgetlora.inference.calibration import load_temperature
    from budgetlora.inference.runner import LoadedRun
    from budgetlora.core.files import atomic_write_text

    output_path = Path(output_path)
    if output_path.exists() and not overwrite:
        raise RunDirError(f"{output_path}: exists; pass --overwrite to replace it")
    if not output_path.parent.exists():
        raise RunDirError(f"{output_path.parent}: output folder does not exist")
    start = time.perf_counter()
    run = LoadedRun(run_dir, model=model, quantize=quantize)
    temperature = load_temperature(run_dir)
    dcfg = run.cfg.data if run.cfg else DataConfig()
    textset = load_file(input_path, dcfg, require_labels=False, label_names=run.label_names)
    probs = (run.logits(textset.texts, batch_size, progress=True) / (temperature or 1.0)).softmax(-1)
    labels = probs.argmax(-1).tolist()
    ids = textset.ids if textset.ids is not None else list(range(len(labels)))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["ID", "Label"] + ([f"prob_{name}" for name in run.label_names] if probabilities else [])
    w.writerow(header)
    for i, (row_id, label) in enumerate(zip(ids, labels)):
        row = [row_id, label]
        if probabilities:
            row += [f"{p:.6f}" for p in probs[i].tolist()]
        w.writerow(row)
    atomic_write_text(output_path, buf.getvalue())
    seconds = time.perf_counter() - start
    return {"rows": len(labels), "output": str(output_path), "seconds": seconds, "samples_per_second": len(labels) / seconds,
            "temperature": temperature}


def predict_text(run_dir: Union[str, Path], text: str, model: Optional[str] = None) -> tuple[str, float]:
    """(label name, probability) of one text; temperature-scaled like `predict_file`'s."""
    from budgetlora.inference.calibration import load_temperature
    from budgetlora.inference.runner import LoadedRun

    run = LoadedRun(run_dir, model=model)
    temperature = load_temperature(run_dir) or 1.0
    probs = (run.logits([text], batch_size=1) / temperature).softmax(-1)[0]
    label = int(probs.argmax())
    return run.label_names[label], float(probs[label])
