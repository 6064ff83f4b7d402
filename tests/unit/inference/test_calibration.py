"""Calibration: ECE and NLL on hand-made cases, temperature scaling that recovers a known
temperature, and `evaluate --calibrate` / `predict --probabilities` on a tiny run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.inference import calibration as cal
from budgetlora.training.trainer import train


def test_ece_of_a_constant_confidence_is_its_gap_to_accuracy():
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0] * 5 + [1] * 5)  # 90% sure, right half the time
    assert cal.ece(probs, labels) == pytest.approx(0.4)
    assert cal.ece(probs, np.zeros(10, dtype=int)) == pytest.approx(0.1)


def test_ece_weights_bins_by_rows_and_bins_are_right_closed():
    # 1/3 is the upper edge of bin 4 of 15 ((4/15, 5/15]): it must not fall into bin 5.
    bins = cal.reliability_bins(np.array([[1 / 3, 1 / 3, 1 / 3]]), np.array([0]))
    assert [b.count for b in bins].index(1) == 4
    probs = np.array([[0.95, 0.05]] * 3 + [[0.55, 0.45]])
    labels = np.array([0, 0, 0, 1])  # bin of 0.95: 3 rows, all right; bin of 0.55: 1 row, wrong
    assert cal.ece(probs, labels) == pytest.approx(3 / 4 * 0.05 + 1 / 4 * 0.55)
    assert len(cal.reliability_bins(probs, labels)) == cal.ECE_BINS == 15


def test_nll_is_torch_cross_entropy_and_temperature_divides_the_logits():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    assert cal.nll(logits, labels) == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert cal.nll(logits, labels, 2.5) == pytest.approx(torch.nn.functional.cross_entropy(logits / 2.5, labels).item(), rel=1e-6)


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at(true_t):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(20000, 4))
    p = cal.probabilities(logits, true_t)
    labels = np.array([rng.choice(4, p=row) for row in p])
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert cal.nll(logits, labels, t) < cal.nll(logits, labels)
    assert cal.ece(cal.probabilities(logits, t), labels) < cal.ece(cal.probabilities(logits), labels)


def test_fit_temperature_stays_bounded_on_rows_all_right():
    # Sharper is always better here, so only the bound keeps T from 0 (infinitely confident).
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    t = cal.fit_temperature(logits, np.array([0, 1]))
    assert cal.T_MIN <= t < 0.5 and math.isfinite(cal.nll(logits, np.array([0, 1]), t))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_train_csv):
    out = tmp_path_factory.mktemp("calib") / "run"
    train(load_config(None, {
        "model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "output_dir": str(out),
        "epochs": 2, "batch_size": 16, "lr": 5e-3, "r": 4, "head": "linear", "seed": 3, "val_fraction": 0.25,
    }))
    return out


def _logits(run, texts):
    from budgetlora.inference.evaluate import LoadedRun

    return LoadedRun(run).logits(list(texts))


def test_calibrate_fits_on_the_validation_split_only(tiny_run, tiny_eval_csv, tiny_train_csv, tmp_path, capsys):
    assert main(["evaluate", "--run", str(tiny_run), "--data", str(tiny_eval_csv), "--calibrate"]) == 0
    printed = capsys.readouterr().out
    assert "15 equal-width confidence bins" in printed and "ECE" in printed and "NLL" in printed
    stored = json.loads((tiny_run / "calibration.json").read_text())
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert stored["rows"] == metrics["eval_rows"] and str(tiny_train_csv) in stored["data"]
    assert stored["nll_after"] <= stored["nll_before"] + 1e-9
    report = json.loads((tiny_run / "eval" / "eval.json").read_text())
    c = report["calibration"]
    assert c["temperature"] == stored["temperature"] and c["bins"] == 15 and len(c["reliability"]) == 15
    assert sum(b["count"] for b in c["reliability"]) == report["n"]
    # Another evaluation file gives the same temperature: it never sees the evaluated rows.
    other = tmp_path / "other.csv"
    other.write_text("".join(tiny_eval_csv.read_text().splitlines(keepends=True)[:30]))
    assert main(["evaluate", "--run", str(tiny_run), "--data", str(other), "--calibrate"]) == 0
    assert json.loads((tiny_run / "calibration.json").read_text())["temperature"] == stored["temperature"]


def test_predict_probabilities_use_the_stored_temperature(tiny_run, tiny_eval_csv, tmp_path, capsys):
    texts = ["the match goal coach", "shares profit bank", "war minister embassy", "chip software"]
    inp = tmp_path / "texts.jsonl"
    pd.DataFrame({"text": texts}).to_json(inp, orient="records", lines=True)
    (tiny_run / "calibration.json").write_text(json.dumps({"temperature": 3.0}))
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(tiny_run), "--input", str(inp), "--output", str(out), "--probabilities"]) == 0
    assert "T = 3.0000" in capsys.readouterr().out
    rows = list(csv.reader(out.open()))[1:]
    expected = (_logits(tiny_run, texts) / 3.0).softmax(-1)
    got = torch.tensor([[float(v) for v in r[2:]] for r in rows])
    assert torch.allclose(got, expected, atol=2e-6)
    assert [int(r[1]) for r in rows] == expected.argmax(-1).tolist()
    (tiny_run / "calibration.json").write_text("{not json")
    assert main(["predict", "--run", str(tiny_run), "--input", str(inp), "--output", str(out), "--overwrite"]) == 2
    assert "--calibrate" in capsys.readouterr().err
    (tiny_run / "calibration.json").unlink()
