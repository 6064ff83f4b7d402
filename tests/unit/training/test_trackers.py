"""`--report-to`: a tiny run sends log.jsonl's records, its settings and its budget breakdown to
TensorBoard and MLflow, read back here from what they wrote; W&B offline where it is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from budgetlora.cli import main
from budgetlora.config import load_config
from budgetlora.errors import UserError
from budgetlora.training.trackers import RunTrackers, flat_settings
from budgetlora.training.trainer import train


def _settings(tmp_path, model_dir, train_csv, **over):
    base = {
        "model": str(model_dir), "train_file": str(train_csv), "output_dir": str(tmp_path / "run"),
        "epochs": 1, "batch_size": 16, "lr": 5e-3, "r": 4, "head": "linear", "log_every": 3, "seed": 5,
    }
    return {**base, **over}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_receive_the_log_records(tmp_path, tiny_model_dir, tiny_train_csv, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    metrics = train(load_config(None, _settings(tmp_path, tiny_model_dir, tiny_train_csv, report_to="tensorboard,mlflow")))
    run = tmp_path / "run"
    records = _records(run)
    train_steps = [(r["step"], r["loss"]) for r in records if "loss" in r]
    eval_steps = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    assert train_steps and eval_steps

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("loss")] == [(s, round(v, 5)) for s, v in train_steps]
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("eval_accuracy")] == [(s, round(v, 5)) for s, v in eval_steps]
    hparams = next((run / "tensorboard").rglob("hparams.yml")).read_text()
    assert "lora.r: 4" in hparams and f"budget_breakdown.total: {metrics['trainable_params']}" in hparams

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("budgetlora").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    history = client.get_metric_history(found.info.run_id, "loss")
    assert [(m.step, round(m.value, 5)) for m in history] == [(s, round(v, 5)) for s, v in train_steps]
    params = found.data.params
    assert params["lora.r"] == "4" and params["budget_breakdown.total"] == str(metrics["trainable_params"])
    assert params["data.train_file"] == str(tiny_train_csv)
    # the process's store is as before: nothing chosen, so a later MLFLOW_TRACKING_URI is obeyed
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() != f"sqlite:///{(run / 'mlflow.db').resolve()}"


def test_wandb_offline(tmp_path, tiny_model_dir, tiny_train_csv, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (optional); W&B is checked only where it is")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(load_config(None, _settings(tmp_path, tiny_model_dir, tiny_train_csv, report_to="wandb")))
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert offline and any(offline[0].rglob("*.wandb"))


def test_tensorboard_drops_steps_a_resumed_run_logs_again(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = RunTrackers(["tensorboard"], tmp_path)
    first.start({"budget": 10}, {"total": 5})
    for step in (1, 2, 3, 4):
        first.log({"step": step, "loss": 1.0}, step)
    first.finish()
    again = RunTrackers(["tensorboard"], tmp_path)
    again.start({"budget": 10}, {"total": 5}, resume_step=2)  # the checkpoint was at step 2
    for step in (3, 4):
        again.log({"step": step, "loss": 0.5}, step)
    again.finish()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5)]


def test_unknown_tracker_is_one_line_before_anything_runs(tmp_path, tiny_model_dir, tiny_train_csv, capsys):
    args = ["train", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv),
            "--output-dir", str(tmp_path / "run"), "--report-to", "tensorbord"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'tensorboard'" in err
    assert not (tmp_path / "run").exists()


def test_tracker_not_installed_stops_before_training(tmp_path, tiny_model_dir, tiny_train_csv, monkeypatch, capsys):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_mlflow_available", lambda: False)
    args = ["train", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv),
            "--output-dir", str(tmp_path / "run"), "--report-to", "mlflow"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install mlflow" in err
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_cannot_start_is_one_error(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    (tmp_path / "a-file").write_text("not a folder")  # so the store's folder cannot be made
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'x.db'}")
    trackers = RunTrackers(["mlflow"], tmp_path)
    with pytest.raises(UserError, match="--report-to mlflow: could not start"):
        trackers.start({"budget": 1}, {"total": 1})


def test_flat_settings_are_tracker_values():
    flat = flat_settings({"lora": {"r": 8, "target_modules": ["query", "value"], "layers": None}, "budget": 5,
                          "budget_breakdown": {"lora": 3, "total": 4}})
    assert flat == {"lora.r": 8, "lora.target_modules": "query,value", "lora.layers": "none", "budget": 5,
                    "budget_breakdown.lora": 3, "budget_breakdown.total": 4}


def test_wandb_not_logged_in_is_one_error(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (optional); W&B is checked only where it is")
    wandb.teardown()  # W&B keeps one settings object per process; the offline test's would apply here
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved W&B login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    trackers = RunTrackers(["wandb"], tmp_path)
    with pytest.raises(UserError, match="--report-to wandb: could not start .*wandb login"):
        trackers.start({"budget": 1}, {"total": 1})
