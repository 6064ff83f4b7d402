"""Error analysis: `evaluate` writes every misclassified row, most confident first, and a sample
of predictions with each class's probability."""

from __future__ import annotations

import csv
import json

import numpy as np

from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.inference.evaluate import write_errors
from budgetlora.training.trainer import train
from tiny import LABEL_NAMES


def test_errors_file_holds_exactly_the_misclassified_rows(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, capsys):
    run = tmp_path / "run"
    # Two steps at a tiny learning rate: the new head is still near chance, so there are errors to list.
    train(load_config(None, {
        "model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "output_dir": str(run),
        "max_steps": 2, "batch_size": 16, "lr": 1e-6, "r": 2, "head": "linear", "seed": 4,
    }))
    assert main(["evaluate", "--run", str(run), "--data", str(tiny_eval_csv)]) == 0
    assert "most confident first" in capsys.readouterr().out
    report = json.loads((run / "eval" / "eval.json").read_text())
    with open(run / "eval" / "eval_errors.csv", newline="", encoding="utf-8") as f:
        errors = list(csv.DictReader(f))
    correct = sum(report["confusion_matrix"][i][i] for i in range(4))
    assert len(errors) == report["errors"] == report["n"] - correct > 0
    probs = [float(r["probability"]) for r in errors]
    assert probs == sorted(probs, reverse=True)
    data = list(csv.reader(tiny_eval_csv.open()))
    for r in errors:
        row = data[int(r["row"])]
        assert r["gold"] == LABEL_NAMES[int(row[0]) - 1] != r["predicted"]
        assert row[1] in r["text"] and row[2] in r["text"]
    # the confusion matrix's off-diagonal cells count the same rows
    for (gold, pred), n in _pairs(errors).items():
        assert report["confusion_matrix"][LABEL_NAMES.index(gold)][LABEL_NAMES.index(pred)] == n
    sample = report["sample"]
    assert 0 < len(sample) <= 12 and all(len(s["probabilities"]) == 4 for s in sample)
    assert all(abs(sum(s["probabilities"]) - 1) < 1e-4 and s["predicted"] == int(np.argmax(s["probabilities"])) for s in sample)


def _pairs(errors):
    out = {}
    for r in errors:
        out[(r["gold"], r["predicted"])] = out.get((r["gold"], r["predicted"]), 0) + 1
    return out


def test_errors_order_ties_by_row_and_keep_texts_with_commas_and_newlines(tmp_path):
    probs = np.array([[0.6, 0.4], [0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    texts = ["a, b", "right", 'say "hi"\nthen', "d"]
    n = write_errors(tmp_path / "e.csv", texts, [1, 1, 1, 1], probs, ["neg", "pos"])
    rows = list(csv.DictReader((tmp_path / "e.csv").open(newline="")))
    assert n == 3 and [r["row"] for r in rows] == ["2", "0", "3"]
    assert rows[0]["text"] == 'say "hi"\nthen' and rows[1]["text"] == "a, b"
