"""End-to-end training, saving and reloading on a tiny model built in code."""

from __future__ import annotations

import json

import peft
import pytest
import torch

from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.modeling import build_classifier, load_trained
from budgetlora.training.trainer import train


def _cfg(tmp_path, model_dir, train_csv, eval_csv=None, **over):
    base = {
        "model": str(model_dir), "train_file": str(train_csv), "output_dir": str(tmp_path / "run"),
        "epochs": 2, "batch_size": 16, "lr": 5e-3, "r": 4, "lora_alpha": 8, "log_every": 2, "seed": 7,
    }
    if eval_csv:
        base["eval_file"] = str(eval_csv)
    base.update(over)
    return load_config(None, base)


@pytest.mark.parametrize("head", ["default", "linear"])
def test_train_writes_every_output_and_learns(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, head):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, head=head, epochs=4)
    metrics = train(cfg)
    run = tmp_path / "run"
    for name in ("adapter", "config.yaml", "metrics.json", "log.jsonl", "curves.png", "README.md"):
        assert (run / name).exists(), name
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("trainable_params", "total_params", "best_eval_accuracy", "train_samples_per_second", "train_runtime_s"):
        assert key in saved
    assert saved["trainable_params"] == metrics["trainable_params"] < 1_000_000
    # The synthetic classes are separable by keyword: a model that trains must beat chance clearly.
    assert saved["best_eval_accuracy"] > 0.5
    records = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records) and any("eval_accuracy" in r for r in records)
    # config.yaml is enough to rebuild the same settings
    again = load_config(run / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_adapter_reloads_with_head_to_identical_logits(tmp_path, tiny_model_dir, tiny_train_csv):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_train_csv, head="default", bias="lora_only")
    train(cfg)
    run = tmp_path / "run"
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    mask = torch.ones_like(ids)
    model, _, _ = load_trained(run, merge=False)
    merged, _, _ = load_trained(run, merge=True)
    # Plain peft, as a user would: base model + PeftModel.from_pretrained restores LoRA and head.
    base = build_classifier(cfg.model, 4)
    plain = peft.PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    fresh = peft.PeftModel.from_pretrained(build_classifier(cfg.model, 4), str(run / "adapter")).eval()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = plain(input_ids=ids, attention_mask=mask).logits
        c = merged(input_ids=ids, attention_mask=mask).logits
        d = fresh(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b, d)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    # ...and the head is really the trained one, not a fresh random head.
    untrained = build_classifier(cfg.model, 4)
    with torch.no_grad():
        e = untrained(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(a, e)


def test_same_seed_same_result(tmp_path, tiny_model_dir, tiny_train_csv):
    m1 = train(_cfg(tmp_path / "a", tiny_model_dir, tiny_train_csv, precision="fp32"))
    m2 = train(_cfg(tmp_path / "b", tiny_model_dir, tiny_train_csv, precision="fp32"))
    l1 = [json.loads(l) for l in (tmp_path / "a/run/log.jsonl").read_text().splitlines()]
    l2 = [json.loads(l) for l in (tmp_path / "b/run/log.jsonl").read_text().splitlines()]
    strip = lambda recs: [{k: v for k, v in r.items() if k != "samples_per_second"} for r in recs]
    assert strip(l1) == strip(l2)
    assert m1["best_eval_accuracy"] == m2["best_eval_accuracy"]


def test_finished_run_is_not_overwritten(tmp_path, tiny_model_dir, tiny_train_csv, capsys):
    args = ["train", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv), "--epochs", "1",
            "--output-dir", str(tmp_path / "run"), "--r", "2", "--lora-alpha", "4"]
    assert main(args) == 0
    before = (tmp_path / "run/metrics.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "run/metrics.json").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_over_budget_is_refused_before_training_with_breakdown(tmp_path, tiny_model_dir, tiny_train_csv, capsys):
    args = ["train", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv),
            "--output-dir", str(tmp_path / "run"), "--budget", "500", "--r", "8"]  # an adapter given: not planned
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "lora_A" in err and "head" in err and "500" in err
    assert not (tmp_path / "run").exists()  # nothing written, not even an empty folder


def test_bad_flag_values_are_one_line_errors(tmp_path, tiny_model_dir, tiny_train_csv, capsys):
    base = ["train", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv), "--output-dir", str(tmp_path / "r")]
    for bad in (["--lr", "-1"], ["--r", "0"], ["--lora-dropout", "1.5"], ["--budget", "0"], ["--precision", "fp8"]):
        assert main(base + bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("budgetlora: error:"), err
