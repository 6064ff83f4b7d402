"""How far a run's probabilities can be trusted: expected calibration error, negative
log-likelihood, and temperature scaling (Guo et al., 2017) fitted on the run's validation split.

Pure functions of logits and labels (arrays or CPU tensors); `budgetlora evaluate --calibrate`
(inference/evaluate.py) computes the logits and stores the fitted temperature in the run folder
as calibration.json, which `predict --probabilities` and later evaluations then use.

ECE here: the rows are put in ECE_BINS equal-width bins by their confidence (the top class's
probability; bin i holds confidences in (i/15, (i+1)/15]), and ECE is the row-weighted mean of
|accuracy - mean confidence| over the bins.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from budgetlora.errors import RunDirError

ECE_BINS = 15
BINNING = f"{ECE_BINS} equal-width confidence bins"
CALIBRATION_FILE = "calibration.json"
# Temperatures searched (log-uniformly): wide enough for any trained classifier, and bounded so a
# validation split the model gets entirely right cannot drive T to 0 (infinitely confident).
T_MIN, T_MAX = 0.05, 20.0


@dataclass
class ReliabilityBin:
    """One confidence bin of a reliability diagram."""

    lower: float
    upper: float
    count: int
    confidence: Optional[float]  # mean top-class probability of the rows in the bin (None when empty)
    accuracy: Optional[float]  # share of those rows predicted right (None when empty)


def _as_array(x: Any, dtype: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=dtype)


def log_probabilities(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / temperature), in float64."""
    from scipy.special import log_softmax

    return log_softmax(_as_array(logits, np.float64) / temperature, axis=-1)


def probabilities(logits: Any, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_probabilities(logits, temperature))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels (natural log), the cross-entropy."""
    y = _as_array(labels, np.int64)
    logp = log_probabilities(logits, temperature)
    return float(-logp[np.arange(len(y)), y].mean())


def reliability_bins(probs: Any, labels: Any, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Accuracy against confidence in `bins` equal-width bins over [0, 1]."""
    p = _as_array(probs, np.float64)
    y = _as_array(labels, np.int64)
    conf = p.max(-1)
    correct = p.argmax(-1) == y
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # (i/B, (i+1)/B] -> i
    out = []
    for i in range(bins):
        members = index == i
        n = int(members.sum())
        out.append(ReliabilityBin(
            lower=i / bins, upper=(i + 1) / bins, count=n,
            confidence=float(conf[members].mean()) if n else None,
            accuracy=float(correct[members].mean()) if n else None,
        ))
    return out


def ece(probs: Any, labels: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error over `bins` equal-width confidence bins."""
    table = reliability_bins(probs, labels, bins)
    total = sum(b.count for b in table)
    if not total:
        raise ValueError("no rows to measure calibration on")
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in table if b.count))


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on these rows.

    One parameter, so a bounded scalar search on log T (scipy's Brent method) is enough and
    deterministic; argmax, hence accuracy, does not change with T.
    """
    from scipy.optimize import minimize_scalar

    z = _as_array(logits, np.float64)
    y = _as_array(labels, np.int64)
    if len(y) == 0:
        raise ValueError("no rows to fit a temperature on")
    found = minimize_scalar(lambda log_t: nll(z, y, math.exp(log_t)), bounds=(math.log(T_MIN), math.log(T_MAX)),
                            method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def calibration_summary(logits: Any, labels: Any, temperature: Optional[float] = None) -> dict[str, Any]:
    """ECE, NLL and reliability bins of these logits, and with `temperature` the same after scaling."""
    summary: dict[str, Any] = {
        "binning": BINNING, "bins": ECE_BINS,
        "ece": ece(probabilities(logits), labels), "nll": nll(logits, labels),
        "reliability": [asdict(b) for b in reliability_bins(probabilities(logits), labels)],
    }
    if temperature is not None:
        scaled = probabilities(logits, temperature)
        summary.update({
            "temperature": temperature,
            "ece_calibrated": ece(scaled, labels), "nll_calibrated": nll(logits, labels, temperature),
            "reliability_calibrated": [asdict(b) for b in reliability_bins(scaled, labels)],
        })
    return summary


def load_temperature(run_dir: Union[str, Path]) -> Optional[float]:
    """The temperature stored by `evaluate --calibrate`, or None when the run has none."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        t = float(json.loads(path.read_text(encoding="utf-8"))["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{path}: unreadable ({e}); run `budgetlora evaluate --run {run_dir} --data FILE "
                          "--calibrate` again to rewrite it") from None
    if not (math.isfinite(t) and t > 0):
        raise RunDirError(f"{path}: temperature {t} is not a positive number; run `budgetlora evaluate "
                          f"--run {run_dir} --data FILE --calibrate` again to rewrite it")
    return t
