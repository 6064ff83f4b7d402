"""`budgetlora evaluate` and `budgetlora predict` on a run trained on a tiny model."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.training.trainer import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_train_csv):
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(None, {
        "model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "output_dir": str(out),
        "epochs": 3, "batch_size": 16, "lr": 5e-3, "r": 4, "head": "linear", "seed": 3,
    })
    train(cfg)
    return out


def test_evaluate_writes_report_and_prints(tiny_run, tiny_eval_csv, capsys):
    assert main(["evaluate", "--run", str(tiny_run), "--data", str(tiny_eval_csv)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "macro_f1" in printed
    report = json.loads((tiny_run / "eval" / "eval.json").read_text())
    assert report["n"] == 80
    assert set(report["per_class"]) == {"World", "Sports", "Business", "Sci/Tech"}
    assert len(report["confusion_matrix"]) == 4 and sum(map(sum, report["confusion_matrix"])) == 80
    assert 0.0 <= report["macro_f1"] <= 1.0
    assert (tiny_run / "eval" / "eval_confusion.png").stat().st_size > 1000


def test_predict_writes_submission_in_input_order(tiny_run, tmp_path):
    texts = ["the match goal coach", "shares profit bank", "", "chip software internet " * 50, "war minister"]
    inp = tmp_path / "texts.jsonl"
    pd.DataFrame({"text": texts}).to_json(inp, orient="records", lines=True)
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(tiny_run), "--input", str(inp), "--output", str(out), "--probabilities"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0][:2] == ["ID", "Label"] and len(rows[0]) == 6
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(texts))]
    assert all(r[1] in {"0", "1", "2", "3"} for r in rows[1:])
    for r in rows[1:]:
        assert abs(sum(map(float, r[2:])) - 1.0) < 1e-3
    # Sorting batches by length must not reorder the output: same as one-by-one prediction.
    one_by_one = []
    for t in texts:
        single = tmp_path / "one.jsonl"
        pd.DataFrame({"text": [t]}).to_json(single, orient="records", lines=True)
        o = tmp_path / "one.csv"
        main(["predict", "--run", str(tiny_run), "--input", str(single), "--output", str(o), "--overwrite"])
        one_by_one.append(list(csv.reader(o.open()))[1][1])
    assert [r[1] for r in rows[1:]] == one_by_one


def test_predict_uses_id_column_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    inp = tmp_path / "with_ids.csv"
    pd.DataFrame({"id": [10, 20, 30], "text": ["goal", "bank", "chip"]}).to_csv(inp, index=False)
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(tiny_run), "--input", str(inp), "--output", str(out)]) == 0
    assert [r["ID"] for r in csv.DictReader(out.open())] == ["10", "20", "30"]
    before = out.read_bytes()
    assert main(["predict", "--run", str(tiny_run), "--input", str(inp), "--output", str(out)]) == 2
    assert out.read_bytes() == before
    assert "--overwrite" in capsys.readouterr().err


def test_predict_one_text(tiny_run, capsys):
    assert main(["predict", "--run", str(tiny_run), "--text", "the coach said the league season"]) == 0
    label, prob = capsys.readouterr().out.strip().split("\t")
    assert label in {"World", "Sports", "Business", "Sci/Tech"} and 0.25 <= float(prob) <= 1.0


def test_not_a_run_folder(tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path), "--text", "x"]) == 2
    assert "adapter" in capsys.readouterr().err


# --- two inference streams on a CPU -----------------------------------------------------------


@pytest.fixture
def two_torch_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _tiny_classifier():
    import torch

    from budgetlora.config import ModelConfig
    from budgetlora.modeling import build_classifier_from_config
    from tiny import tiny_config

    torch.manual_seed(0)
    return build_classifier_from_config(ModelConfig(model="tiny"), tiny_config("roberta")).eval()


def _rows(n: int = 45) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[1] + [rng.randrange(5, 100) for _ in range(rng.randrange(2, 30))] for _ in range(n)]


def test_two_streams_give_one_streams_logits_in_input_order(two_torch_threads, monkeypatch):
    import torch

    import budgetlora.inference.runner as ev
    from budgetlora.data import Collator

    model, rows, cpu = _tiny_classifier(), _rows(), torch.device("cpu")
    assert ev.inference_streams(cpu) == 2
    two = ev.predict_logits(model, rows, 4, Collator(0), cpu, "fp32")
    assert torch.get_num_threads() == 2, "the caller's thread setting is restored"
    monkeypatch.setattr(ev, "inference_streams", lambda device: 1)
    one = ev.predict_logits(model, rows, 4, Collator(0), cpu, "fp32")
    alone = torch.cat([ev.predict_logits(model, [r], 1, Collator(0), cpu, "fp32") for r in rows])
    torch.testing.assert_close(two, one, atol=0, rtol=0)
    torch.testing.assert_close(two, alone, atol=1e-5, rtol=1e-4)  # row i's logits in row i


def test_an_error_in_a_stream_reaches_the_caller(two_torch_threads):
    import torch

    import budgetlora.inference.runner as ev
    from budgetlora.data import Collator

    model, calls = _tiny_classifier(), []

    def fail_on_third(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in a worker")

    model.register_forward_pre_hook(fail_on_third, with_kwargs=True)
    with pytest.raises(RuntimeError, match="boom in a worker"):
        ev.predict_logits(model, _rows(), 4, Collator(0), torch.device("cpu"), "fp32")
    assert torch.get_num_threads() == 2


def test_no_rows_is_a_clear_error(two_torch_threads):
    import torch

    import budgetlora.inference.runner as ev
    from budgetlora.data import Collator

    with pytest.raises(ValueError, match="no rows to predict"):
        ev.predict_logits(_tiny_classifier(), [], 4, Collator(0), torch.device("cpu"), "fp32")
