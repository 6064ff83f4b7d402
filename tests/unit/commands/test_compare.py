"""`budgetlora compare`: a table, JSON and a bar plot read from finished run folders."""

from __future__ import annotations

import json


from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.inference.evaluate import evaluate_run
from budgetlora.training.trainer import train


def _fake_run(folder, acc, params, evals=None, teacher=None):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "finished": True, "model": "roberta-base", "head": "default", "trainable_params": params,
        "best_eval_accuracy": acc, "train_runtime_s": 4000.0, "train_samples_per_second": 31.5,
    }))
    (folder / "config.yaml").write_text(f"train:\n  teacher: {teacher or 'null'}\n")
    for name, value in (evals or {}).items():
        (folder / "eval").mkdir(exist_ok=True)
        (folder / "eval" / f"{name}.json").write_text(json.dumps({"accuracy": value, "n": 10}))
    return folder


def test_compare_prints_a_table_and_writes_the_plot(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, capsys, monkeypatch):
    real = tmp_path / "real"
    cfg = load_config(None, {"model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "max_train_samples": 64,
                             "epochs": 1, "batch_size": 16, "output_dir": str(real), "precision": "fp32"})
    metrics = train(cfg)
    report = evaluate_run(real, tiny_eval_csv)
    a = _fake_run(tmp_path / "a", 0.9459, 925_444, {"test": 0.9401}, teacher="runs/big")
    unfinished = tmp_path / "b"
    unfinished.mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(real), str(a), str(unfinished)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:5] == ["run", "model", "head", "trainable", "val"]
    assert "eval" in lines[0] and "test" in lines[0] and "teacher" in lines[0]
    real_row = next(l for l in lines if l.startswith(str(real)))
    assert f"{metrics['trainable_params']:,}" in real_row and f"{metrics['best_eval_accuracy']:.4f}" in real_row
    assert f"{report['accuracy']:.4f}" in real_row  # eval/eval.json from `budgetlora evaluate`
    a_row = next(l for l in lines if l.startswith(str(a)))
    assert "925,444" in a_row and "0.9459" in a_row and "0.9401" in a_row and "1h06m" in a_row and "runs/big" in a_row
    assert "skipping" in captured.err and str(unfinished) in captured.err
    png = tmp_path / "compare.png"  # the default --output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out_png = tmp_path / "plots" / "c.png"
    out_png.parent.mkdir()
    assert main(["compare", str(a), str(real), "--json", "--output", str(out_png)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in data["runs"]] == [str(a), str(real)]
    assert data["runs"][0]["eval_accuracy"] == {"test": 0.9401}
    assert data["runs"][1]["trainable_params"] == metrics["trainable_params"]
    assert out_png.stat().st_size > 1000


def test_compare_without_any_finished_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--output", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("budgetlora: error:") and "finished run" in err[-1]
    assert not (tmp_path / "c.png").exists()
