"""Slow: a real pretrained encoder (all-MiniLM-L6-v2) on real AG News rows and the Kaggle file."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from budgetlora.cli import main
from budgetlora.modeling import load_trained

from conftest import shared_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, minilm_dir, all_threads):
    train_csv = shared_path("data", "ag_news", "train.csv")
    out = tmp_path_factory.mktemp("real") / "run"
    args = ["train", "--config", "recipes/agnews-minilm-cpu.yaml", "--model", str(minilm_dir),
            "--train-file", str(train_csv), "--max-train-samples", "1500", "--max-eval-samples", "500",
            "--output-dir", str(out)]
    assert main(args) == 0
    return out


def test_real_training_learns(real_run):
    metrics = json.loads((real_run / "metrics.json").read_text())
    assert metrics["trainable_params"] < 1_000_000
    # 500 held-out rows of a stratified split: chance is 0.25; a model that learned is far above.
    assert metrics["best_eval_accuracy"] >= 0.85, metrics["best_eval_accuracy"]


def test_real_adapter_reloads_to_identical_logits(real_run):
    a, tok, _ = load_trained(real_run, merge=False)
    b, _, _ = load_trained(real_run, merge=False)
    enc = tok(["Stocks rallied as oil prices fell", "The striker scored twice"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(a(**enc).logits, b(**enc).logits, rtol=0, atol=0)


def test_real_predict_kaggle_submission(real_run, tmp_path):
    pkl = shared_path("data", "ag_news_kaggle", "test_unlabelled.pkl")
    out = tmp_path / "submission.csv"
    assert main(["predict", "--run", str(real_run), "--input", str(pkl), "--output", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["ID", "Label"]
    assert len(rows) == 8001
    assert [int(r[0]) for r in rows[1:]] == list(range(8000))
    labels = [int(r[1]) for r in rows[1:]]
    assert set(labels) <= {0, 1, 2, 3} and len(set(labels)) == 4
