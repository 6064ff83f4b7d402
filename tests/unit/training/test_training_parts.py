"""The training package's pieces, each alone: progress records, the metrics file, the fault seam,
the optimizer groups, and fit() on a run built by setup()."""

from __future__ import annotations

import json

import pytest
import torch

from budgetlora.config import RunConfig, TrainConfig
from budgetlora.errors import RunDirError
from budgetlora.training.faults import apply_loss_fault, inject_loss_fault
from budgetlora.training.outputs import RunMetrics
from budgetlora.training.setup import param_groups
from budgetlora.training.state import LogWindow, TrainState


def test_train_state_and_window_round_trip_through_the_flat_checkpoint_layout():
    state = TrainState(step=7, epoch=1, batch_in_epoch=3, samples_seen=90, history=[{"step": 5, "eval_accuracy": 0.5}])
    window = LogWindow()
    window.add(2.0, 3, 4)
    flat = {**state.state_dict(), **window.state_dict()}
    assert set(window.state_dict()) == {"window_loss_sum", "window_correct", "window_seen"}  # earlier versions' keys
    assert TrainState.from_state_dict(flat) == state
    assert LogWindow.from_state_dict(flat) == window
    assert window.take() == (2.0, 0.75) and window == LogWindow()  # taking the means starts a new window


def test_train_state_counts_evaluations_and_keeps_the_best():
    state = TrainState(step=1)
    assert state.record_eval(0.5)
    state.step = 2
    assert not state.record_eval(0.5)  # not better: patience counts
    assert (state.best_eval_accuracy, state.best_step, state.evals_without_improvement) == (0.5, 1, 1)
    state.step = 3
    assert state.record_eval(0.6) and state.evals_without_improvement == 0 and state.best_step == 3


def _metrics(**kw) -> RunMetrics:
    base = dict(model="m", head="default", trainable_params=10, total_params=100, budget=1000,
                budget_breakdown={"head": 10, "total": 10}, best_eval_accuracy=0.9, best_step=4,
                final_eval_accuracy=0.8, steps=5, epochs_completed=1.0, stopped_early=False, train_rows=40,
                eval_rows=10, label_names=["a", "b"], train_samples=40, train_samples_per_second=1.0,
                train_tokens_per_second=2.0, train_runtime_s=40.0, precision="fp32", device="cpu",
                machine="test", seed=0, command="budgetlora train")
    return RunMetrics(**{**base, **kw})


def test_run_metrics_write_read_and_dict_access(tmp_path):
    m = _metrics()
    m.write(tmp_path)
    back = RunMetrics.read(tmp_path)
    assert back == m and back["best_eval_accuracy"] == 0.9 and back.world_size == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["finished"] is True


def test_run_metrics_read_metrics_written_by_an_earlier_version(tmp_path):
    old = _metrics().as_dict()
    del old["world_size"]  # not written before multi-process training
    old["some_future_key"] = 1
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    back = RunMetrics.read(tmp_path)
    assert back.world_size == 1 and back.extra == {"some_future_key": 1}
    assert back.as_dict()["some_future_key"] == 1  # written back as it was read


def test_run_metrics_read_says_what_is_wrong(tmp_path):
    with pytest.raises(RunDirError, match="not a finished budgetlora run"):
        RunMetrics.read(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(RunDirError, match="unreadable"):
        RunMetrics.read(tmp_path)


def test_loss_fault_applies_only_inside_its_block():
    loss = torch.tensor(1.5)
    with inject_loss_fault(lambda x: x * 2):
        assert apply_loss_fault(loss).item() == 3.0
    assert apply_loss_fault(loss) is loss


def test_param_groups_give_lora_b_its_own_rate_and_no_decay_to_biases():
    model = torch.nn.Module()
    model.lora_A = torch.nn.Linear(4, 2, bias=False)
    model.lora_B = torch.nn.Linear(2, 4, bias=True)
    model.frozen = torch.nn.Linear(2, 2)
    model.frozen.requires_grad_(False)
    t = TrainConfig(lr=1e-3, lora_plus_ratio=4.0, weight_decay=0.1)
    groups = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in param_groups(model, t)}
    assert groups == {(1e-3, 0.1): 1, (4e-3, 0.1): 1, (4e-3, 0.0): 1}


def test_setup_then_fit_then_finalize_is_train(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv):
    """The three stages called by hand give a finished run folder, as train() does."""
    from budgetlora.config import load_config
    from budgetlora.training.loop import fit
    from budgetlora.training.trainer import finalize, run_folder, setup

    cfg = load_config(None, {"model": str(tiny_model_dir), "train_file": str(tiny_train_csv),
                             "eval_file": str(tiny_eval_csv), "max_train_samples": 64, "epochs": 1,
                             "batch_size": 16, "output_dir": str(tmp_path / "run"), "precision": "fp32"})
    with run_folder(cfg) as out:
        run = setup(cfg, out, resume=False)
        assert run.state.step == 0 and run.engine.total_steps == 4
        fit(run)
        metrics = finalize(run, command="by hand")
    assert metrics.steps == 4 and metrics.best_eval_accuracy == max(h["eval_accuracy"] for h in run.state.history)
    assert RunMetrics.read(tmp_path / "run") == metrics
    assert not (tmp_path / "run" / ".lock").exists()
