"""Reliability (issue #6): kills and resumes, signals, divergence, the run lock, every bad input.

Kill tests run the real CLI in a subprocess (`python -m budgetlora.cli train ...`), SIGKILL it at
chosen moments, then run `budgetlora train --resume DIR` with no other argument and compare the
outcome with an uninterrupted run of the same seed: metrics.json, every numeric field of every
log.jsonl record (timing fields excepted) and the best adapter's weights, to 1e-6 (on CPU in fp32
they are in fact bit-identical). To hit a checkpoint write, the subprocess gets
BUDGETLORA_TEST_SLOW_CHECKPOINT (see budgetlora/checkpoint.py), which pauses before and half-way
through every checkpoint write.

Bad inputs go through `budgetlora.cli.main` in-process (a subprocess per case would cost seconds
of imports each): exit code 2, exactly one stderr line starting "budgetlora: error:", and nothing
that was in the output folder before is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from budgetlora.training import checkpoint as ckpt
from budgetlora.cli import main
from budgetlora.config import ModelConfig, load_config
from budgetlora.errors import ConfigError, DataError, ModelLoadError
from budgetlora.errors import TrainingDiverged
from budgetlora.training.faults import inject_loss_fault
from budgetlora.training.outputs import JsonlLog
from budgetlora.training.trainer import oom_message
from tiny import write_agnews_csv

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = {"samples_per_second"}  # wall-clock dependent; everything else must match
# 96 rows -> 86 train / 10 validation, 6 batches of 16 per epoch, 12 optimizer steps in 2 epochs;
# evaluation at steps 4, 6 (epoch end), 8, 12; a checkpoint after every step, the last 2 kept.
TRAIN_ARGS = [
    "--epochs", "2", "--batch-size", "16", "--r", "2", "--lora-alpha", "4", "--precision", "fp32",
    "--save-every", "1", "--log-every", "1", "--eval-every", "4", "--keep-checkpoints", "2",
    "--seed", "3", "--lr", "5e-3",
]
STEPS = 12
SLOW = "0.25"  # seconds, twice per checkpoint write, in the runs that get killed


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _env(slow: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop(ckpt.SLOW_ENV, None)
    if slow:
        env[ckpt.SLOW_ENV] = SLOW
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "budgetlora.cli", *args]


def _start(args: list[str], slow: bool = True) -> subprocess.Popen:
    return subprocess.Popen(_cli("train", *args), env=_env(slow), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=timeout)


def _wait_for(proc: subprocess.Popen, cond, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaps it: a zombie would still count as a live lock owner
    assert proc.returncode == -signal.SIGKILL


def _complete_ckpts(run: Path) -> list[str]:
    return [d.name for d in ckpt._complete(run / ckpt.CKPT_DIR)]


def _tmp_ckpt_with_weights(run: Path, step: int) -> bool:
    return any((d / "trainable.safetensors").exists() for d in (run / ckpt.CKPT_DIR).glob(f".tmp-step-{step}-*"))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _close(a, b, path: str) -> None:
    if isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float)):
        assert abs(a - b) <= 1e-6, f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_run(run: Path, ref: Path) -> None:
    """The resumed run ends where the uninterrupted one did: metrics, log, best adapter."""
    m, r = json.loads((run / "metrics.json").read_text()), json.loads((ref / "metrics.json").read_text())
    for key in ("best_eval_accuracy", "final_eval_accuracy", "steps", "best_step", "epochs_completed",
                "train_samples", "stopped_early", "trainable_params", "train_rows", "eval_rows"):
        _close(m[key], r[key], f"metrics.json {key}")
    la, lb = _log(run), _log(ref)
    assert [x["step"] for x in la] == [x["step"] for x in lb], "log.jsonl has other records"
    for i, (x, y) in enumerate(zip(la, lb)):
        assert x.keys() == y.keys(), f"log.jsonl record {i}"
        for k in x.keys() - TIMING_KEYS:
            _close(x[k], y[k], f"log.jsonl record {i} ({x['step']}) {k}")
    wa = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0), k
    assert _complete_ckpts(run) == _complete_ckpts(ref)  # the last K, pruned alike
    assert not (run / ".lock").exists()
    assert not list((run / ckpt.CKPT_DIR).glob(".tmp-*")) and not list(run.glob(".tmp-adapter-*"))


def _resume(run: Path) -> subprocess.CompletedProcess:
    done = _run(["train", "--resume", str(run)])  # no other argument
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    return write_agnews_csv(tmp_path_factory.mktemp("rel-data") / "train.csv", 96, seed=1)


@pytest.fixture(scope="module")
def base_args(tiny_model_dir, small_csv) -> list[str]:
    return ["--model", str(tiny_model_dir), "--train-file", str(small_csv), *TRAIN_ARGS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base_args) -> Path:
    """The uninterrupted run every killed-and-resumed run must reproduce."""
    ref = tmp_path_factory.mktemp("rel-ref") / "run"
    done = _run(["train", *base_args, "--output-dir", str(ref)])
    assert done.returncode == 0, done.stderr[-3000:]
    return ref


# ---------------------------------------------------------------------------------------------
# 2. SIGKILL at any moment, then --resume: the uninterrupted run's results
# ---------------------------------------------------------------------------------------------


def test_reference_run_keeps_last_k_checkpoints_and_best_adapter(reference):
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["finished"]
    assert _complete_ckpts(reference) == [f"step-{STEPS - 1}", f"step-{STEPS}"]  # --keep-checkpoints 2
    assert (reference / "adapter" / "adapter_model.safetensors").is_file()  # the best, kept apart
    best = metrics["best_step"]
    evals = [r for r in _log(reference) if "eval_accuracy" in r]
    assert max(r["eval_accuracy"] for r in evals) == metrics["best_eval_accuracy"]
    assert [r["step"] for r in evals if r["eval_accuracy"] == metrics["best_eval_accuracy"]][0] == best
    state = json.loads((reference / ckpt.CKPT_DIR / f"step-{STEPS}" / "state.json").read_text())
    for key in ("step", "epoch", "batch_in_epoch", "samples_seen", "window_loss_sum", "history", "best_step"):
        assert key in state  # what a resume needs: position in the data order, log window, history


# Where one run is SIGKILLed, stage after stage: each stage resumes the previous stage's corpse
# (itself a resumed run from the second stage on) and is killed again at the next point.
KILL_POINTS = [
    ("before-first-checkpoint", lambda run: (run / "config.yaml").exists()),
    ("after-3-checkpoints", lambda run: (run / ckpt.CKPT_DIR / "step-3").exists()),
    ("mid-write-step-5", lambda run: _tmp_ckpt_with_weights(run, 5)),
    ("mid-write-epoch-end-step-6", lambda run: _tmp_ckpt_with_weights(run, 6)),  # after eval + adapter save
    ("after-step-9-in-epoch-2", lambda run: (run / ckpt.CKPT_DIR / "step-9").exists()),
]


def _resume_slow(run: Path) -> subprocess.Popen:
    return subprocess.Popen(_cli("train", "--resume", str(run)), env=_env(slow=True),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_result(tmp_path, base_args, reference, capsys):
    run = tmp_path / "run"
    proc = _start([*base_args, "--output-dir", str(run)])
    for i, (point, cond) in enumerate(KILL_POINTS):
        if i:
            proc = _resume_slow(run)  # no argument but the folder
        _wait_for(proc, lambda: cond(run), point)
        if point == "after-3-checkpoints":
            # 4. While the run lives, a second run into its folder is refused, however it is asked for.
            for second in ([*base_args, "--output-dir", str(run)], ["--resume", str(run)]):
                capsys.readouterr()
                assert main(["train", *second]) == 2
                assert f"another budgetlora run (pid {proc.pid}) is writing to this folder" in _error_line(capsys)
        _kill9(proc)
        if point == "before-first-checkpoint":
            assert _complete_ckpts(run) == [], "killed too late for this case"
        if point.startswith("mid-write"):
            step = int(point.rsplit("-", 1)[1])
            assert f"step-{step}" not in _complete_ckpts(run), point  # half written: not a checkpoint
            assert list((run / ckpt.CKPT_DIR).glob(f".tmp-step-{step}-*")), point
        # The dead run's lock is left behind: the next resume must take it over.
        assert (run / ".lock").read_text().split()[0] == str(proc.pid)
        assert not (run / "metrics.json").exists()
    _resume(run)
    assert_same_run(run, reference)


def test_sigkill_at_random_moments_then_resume(tmp_path, base_args, reference):
    """Two kills at seeded random moments, the second one of the resumed run, then a resume."""
    rng = random.Random(6)
    run = tmp_path / "run"
    proc = _start([*base_args, "--output-dir", str(run)])
    _wait_for(proc, lambda: (run / "config.yaml").exists(), "the start of training")
    time.sleep(rng.uniform(0.1, 1.5))
    _kill9(proc)
    first = _complete_ckpts(run)
    proc = _resume_slow(run)
    _wait_for(proc, lambda: _complete_ckpts(run) not in (first, []), "a new checkpoint")
    time.sleep(rng.uniform(0.0, 0.5))
    _kill9(proc)
    _resume(run)
    assert_same_run(run, reference)


# ---------------------------------------------------------------------------------------------
# SIGINT / SIGTERM: a checkpoint, a one-line message, a clean exit; the resume finishes the run
# ---------------------------------------------------------------------------------------------


def _one_error_line(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("budgetlora: error:")]
    return len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in stderr


def _stop_with(proc: subprocess.Popen, run: Path, sig: signal.Signals, after_step: int) -> int:
    _wait_for(proc, lambda: (run / "log.jsonl").exists() and max(_log_steps(run), default=0) >= after_step,
              f"step {after_step}")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert _one_error_line(err), err[-3000:]
    line = next(line for line in err.splitlines() if line.startswith("budgetlora: error:"))
    m = re.search(rf"stopped by {sig.name} at step (\d+); a checkpoint is saved: budgetlora train --resume (\S+)$", line)
    assert m, line
    step = int(m.group(1))
    assert after_step <= step < STEPS and Path(m.group(2)) == run
    assert _complete_ckpts(run)[-1] == f"step-{step}"  # saved on the signal, off the --save-every grid
    assert not (run / ".lock").exists()  # released on the way out
    assert not (run / "metrics.json").exists()
    return step


def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly(tmp_path, base_args, reference):
    run = tmp_path / "run"
    proc = _start([*base_args, "--output-dir", str(run), "--save-every", "5"])
    first = _stop_with(proc, run, signal.SIGTERM, after_step=2)
    proc = _resume_slow(run)
    _stop_with(proc, run, signal.SIGINT, after_step=first + 2)
    done = _run(["train", "--resume", str(run), "--save-every", "1"])  # any save_every: the same results
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, reference)


def _log_steps(run: Path) -> list[int]:
    steps = []
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


# ---------------------------------------------------------------------------------------------
# 3. Numerical faults
# ---------------------------------------------------------------------------------------------


def _error_line(capsys, strict: bool = True) -> str:
    """The one error line on stderr. strict: nothing else either; else other lines (a run's
    progress bar and log) may come before it, and the error line must start a line of its own."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if strict:
        assert len(lines) == 1, err
    errors = [line for line in lines if line.startswith("budgetlora: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    return errors[0]


def test_nan_loss_stops_keeps_last_good_checkpoint_and_resumes_with_lower_lr(
    tmp_path, base_args, reference, monkeypatch, capsys
):
    calls = {"n": 0}

    def nan_at_step_6(loss):
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 6 else loss

    run = tmp_path / "run"
    with inject_loss_fault(nan_at_step_6):
        assert main(["train", *base_args, "--output-dir", str(run)]) == 2
    line = _error_line(capsys, strict=False)
    assert "training diverged: the loss is nan at step 6" in line
    assert f"budgetlora train --resume {run} --lr 0.0005" in line and "step-5" in line
    assert _complete_ckpts(run) == ["step-4", "step-5"]  # the last good ones, nothing after
    assert not (run / ".lock").exists() and not (run / "metrics.json").exists()

    # A damaged checkpoint is a one-line error naming it, not a traceback.
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / ckpt.CKPT_DIR / "step-5" / "rng.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["train", "--resume", str(damaged)]) == 2
    assert "step-5: cannot read this checkpoint" in _error_line(capsys)

    assert main(["train", "--resume", str(run), "--lr", "0.0005"]) == 0
    got, ref = _log(run), _log(reference)
    lr = {r["step"]: r["lr"] for r in got if "lr" in r}
    ref_lr = {r["step"]: r["lr"] for r in ref if "lr" in r}
    assert all(lr[s] == ref_lr[s] for s in range(1, 6))  # before the fault: the original rate
    for s in range(6, STEPS + 1):  # after the resume: the lower one, on the same schedule
        assert lr[s] == pytest.approx(ref_lr[s] / 10, rel=1e-9, abs=1e-15)


def test_real_divergence_with_a_huge_learning_rate(tmp_path, base_args, capsys):
    run = tmp_path / "run"
    rc = main(["train", *base_args, "--output-dir", str(run), "--lr", "1e30", "--max-grad-norm", "0",
               "--warmup-fraction", "0"])
    assert rc == 2
    line = _error_line(capsys, strict=False)
    assert "training diverged:" in line and f"--resume {run} --lr" in line
    for name in _complete_ckpts(run):  # whatever was kept is finite
        weights = load_file(str(run / ckpt.CKPT_DIR / name / "trainable.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), name


def test_non_finite_weights_never_become_a_checkpoint(tmp_path):
    from types import SimpleNamespace

    from budgetlora.training.state import TrainState

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = SimpleNamespace(train=SimpleNamespace(save_every=1, keep_checkpoints=2, lr=1e-3))
    ckpt.maybe_save(tmp_path, TrainState(step=1), model, opt, sched, cfg, end_of_epoch=False)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="weights became NaN or infinite at step 2.*step-1.*--lr 0.0001"):
        ckpt.maybe_save(tmp_path, TrainState(step=2), model, opt, sched, cfg, end_of_epoch=False)
    assert _complete_ckpts(tmp_path) == ["step-1"]


class _FakePeftModel:
    """Writes an adapter file; `crash=True` dies half-way, like a run killed while saving."""

    def __init__(self, content: bytes, crash: bool = False):
        self.content, self.crash = content, crash

    def save_pretrained(self, path: str) -> None:
        (Path(path) / "adapter_model.safetensors").write_bytes(self.content)
        if self.crash:
            raise KeyboardInterrupt


def test_best_adapter_is_replaced_atomically(tmp_path):
    from budgetlora.config import RunConfig
    from budgetlora.modeling import save_adapter

    adapter = tmp_path / "adapter"
    save_adapter(_FakePeftModel(b"old"), None, RunConfig(), ["a", "b"], adapter)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(_FakePeftModel(b"half", crash=True), None, RunConfig(), ["a", "b"], adapter)
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"old"  # untouched
    assert (adapter / "budgetlora.json").is_file()
    save_adapter(_FakePeftModel(b"new"), None, RunConfig(), ["a", "b"], adapter)
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folders left


def test_gpu_out_of_memory_message():
    msg = oom_message(32, 1, 128)
    assert "--batch-size 16 --grad-accum 2" in msg and "32 rows per optimizer step" in msg
    assert "--eval-batch-size 64" in msg and "\n" not in msg
    assert "--batch-size 4 --grad-accum 8" in oom_message(8, 4, 16)
    assert "--max-length" in oom_message(1, 1, 1)


def test_out_of_memory_in_the_loop_is_a_user_error(tmp_path, base_args, monkeypatch, capsys):
    def oom(loss):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with inject_loss_fault(oom):
        assert main(["train", *base_args, "--output-dir", str(tmp_path / "run")]) == 2
    line = _error_line(capsys, strict=False)
    assert "out of GPU memory with --batch-size 16: try --batch-size 8 --grad-accum 2" in line
    assert not (tmp_path / "run" / ".lock").exists()


# ---------------------------------------------------------------------------------------------
# 4. The lock
# ---------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, base_args, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{_dead_pid()} {socket.gethostname()}")
    assert main(["train", *base_args, "--output-dir", str(run), "--epochs", "1", "--save-every", "3"]) == 0
    assert not (run / ".lock").exists() and (run / "metrics.json").exists()


@pytest.mark.parametrize("owner", ["live-here", "other-host"])
def test_live_lock_refuses_a_second_run(tmp_path, base_args, capsys, owner):
    run = tmp_path / "run"
    run.mkdir()
    lock = f"{os.getpid()} {socket.gethostname()}" if owner == "live-here" else "1 some-other-machine"
    (run / ".lock").write_text(lock)
    assert main(["train", *base_args, "--output-dir", str(run)]) == 2
    line = _error_line(capsys)
    assert "another budgetlora run" in line and "--output-dir" in line
    assert (run / ".lock").read_text() == lock  # not stolen
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


# ---------------------------------------------------------------------------------------------
# 1. Bad inputs: exit code 2, one line, nothing already written overwritten
# ---------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def refused(tmp_path, capsys, tiny_model_dir, small_csv):
    """refused(args, pattern): `budgetlora train args` (model/data/output defaulted) -> exit 2 with
    one line matching pattern, and the output folder's earlier contents unchanged."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    (out / "config.yaml").write_text("# an earlier config\n")

    def check(args: list[str], pattern: str, output: Path = out) -> str:
        full = ["train", *args]
        defaults = {"--model": str(tiny_model_dir), "--train-file": str(small_csv), "--output-dir": str(output)}
        for flag, value in defaults.items():
            if flag not in args and "--resume" not in args and "--config" not in args:
                full += [flag, value]
        before = _snapshot(out)
        capsys.readouterr()
        assert main(full) == 2, full
        line = _error_line(capsys)
        assert re.search(pattern, line), line
        after = _snapshot(out)
        assert {k: after.get(k) for k in before} == before, "an existing file was changed"
        assert not [k for k in after.keys() - before.keys() if not k.startswith("cache")], after.keys()
        return line

    return check


def _csv(tmp_path: Path, name: str, content, mode: str = "w") -> str:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return str(p)


def test_bad_data_files(tmp_path, refused):
    def train_file(name, content, pattern, *extra):
        path = _csv(tmp_path, name, content)
        line = refused(["--train-file", path, *extra], pattern)
        assert path in line  # names the file

    train_file("empty.csv", b"", "the file is empty")
    train_file("blank.csv", "  \n\n \t\n", r"empty \(only whitespace\)")
    train_file("columns.csv", "label,text\n0,fine\n1,too,many\n", "line 3: 3 fields, but the header")
    train_file("quote.csv", 'label,text\n0,"never closed\n1,b\n', 'line 2: a quoted field never closes')
    train_file("range.csv", "label,text\n0,a\n1,b\n7,c\n", r"label 7 is out of range", "--label-names", "a,b,c,d")
    train_file("ag-range.csv", '"1","t","d"\n"5","t","d"\n', r"class 5 is outside 1\.\.4")
    train_file("negative.csv", "label,text\n0,a\n-3,b\n", "label -3 is negative")
    train_file("mixed.csv", "label,text\n0,a\nsports,b\n1,c\n", "labels mix integer ids")
    train_file("unknown.csv", "label,text\nWorld,a\nSpace,b\n", "unknown label 'Space'", "--label-names", "World,Sports")
    train_file("missing-class.csv", "label,text\n" + "".join(f"{i % 3},row {i}\n" for i in range(30)),
               r"no training rows of class 3 \('d'\)", "--label-names", "a,b,c,d")
    train_file("all-empty.csv", 'label,text\n0,""\n1,"   "\n', "every text is empty")
    train_file("latin1.csv", "label,text\n0,caf\xe9\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 at byte offset 16\)")
    train_file("bad.jsonl", '{"text": "a", "label": 0}\n{"text": \n', "line 2")
    train_file("data.xlsx", "x", "unsupported file type")
    refused(["--train-file", str(tmp_path / "nope.csv")], "file not found")
    (tmp_path / "folder.csv").mkdir()
    refused(["--train-file", str(tmp_path / "folder.csv")], "is a folder, not a data file")


def test_unknown_label_in_eval_file(tmp_path, refused):
    train = _csv(tmp_path, "tr.csv", "label,text\n" + "".join(f"{'ab'[i % 2]},row {i}\n" for i in range(20)))
    ev = _csv(tmp_path, "ev.csv", "label,text\na,x\nc,y\n")
    line = refused(["--train-file", train, "--eval-file", ev], "unknown label 'c'; known labels: a, b")
    assert ev in line


def test_unreadable_data_file(tmp_path, refused, monkeypatch, small_csv):
    path = tmp_path / "locked.csv"
    shutil.copy(small_csv, path)
    real = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)  # chmod 000 does not stop root
    refused(["--train-file", str(path)], r"cannot read the file \(Permission denied\)")


def test_pickle_that_would_run_a_command_is_refused_not_run(tmp_path, refused):
    marker = tmp_path / "PWNED"

    class RunsACommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(RunsACommand(), protocol=2))
    line = refused(["--train-file", str(path)], r"refers to (posix|os|nt)\.system, which is not on the allow-list")
    assert str(path) in line
    assert not marker.exists()


def test_bad_settings(tmp_path, refused):
    for args, pattern in [
        (["--lr", "-1"], r"lr: learning rate must be > 0, got -1\.0"),
        (["--lr", "nan"], r"lr: learning rate must be > 0"),
        (["--r", "0"], r"r: LoRA rank must be a positive integer, got 0"),
        (["--lora-dropout", "1.5"], r"lora_dropout: must be in \[0, 1\), got 1\.5"),
        (["--budget", "0"], "budget: must be a positive number of parameters, got 0"),
        (["--budget", "-5"], "budget: must be a positive number of parameters, got -5"),
        (["--epochs", "abc"], r"epochs: 'abc' is not a valid float"),
        (["--batch-size", "2.5"], r"batch_size: '2\.5' is not a valid int"),
        (["--precision", "fp8"], "precision: 'fp8' is not a valid"),
        (["--keep-checkpoints", "0"], "keep_checkpoints: must be >= 1"),
        # over budget: refused before any weight is loaded (an adapter given: without one, train plans for 500)
        (["--budget", "500", "--r", "8"], "500"),
    ]:
        refused(args, pattern)


def test_argparse_mistakes_are_one_line(capsys):
    for args, pattern in [
        (["train", "--lrr", "3"], r"unrecognized arguments: --lrr 3 \(did you mean --lr\?\)"),
        (["train", "--lr"], "argument --lr: expected one argument"),
        (["trian"], "invalid choice: 'trian'"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        line = _error_line(capsys)
        assert re.search(pattern, line), line


def test_every_command_prints_its_help(capsys):
    """argparse %-formats help texts; a config field's help with a bare '%' broke `train --help`."""
    from budgetlora.cli import build_parser

    commands = [name for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
                for name in action.choices]
    assert "train" in commands and "predict" in commands
    for command in [[]] + [[c] for c in commands]:
        with pytest.raises(SystemExit) as e:
            main([*command, "--help"])
        assert e.value.code == 0, command
        assert capsys.readouterr().out.startswith("usage: budgetlora"), command


def test_bad_recipes(tmp_path, refused):
    def recipe(name, text, pattern):
        path = _csv(tmp_path, name, text)
        refused(["--config", path], pattern)

    recipe("typo.yaml", "lora:\n  rr: 4\n", r"unknown setting 'lora\.rr'; did you mean 'r'\?")
    recipe("typo-flat.yaml", "learning_rate: 0.1\n", r"unknown setting 'learning_rate'")
    recipe("value.yaml", "train:\n  epochs: many\n", r"epochs: 'many' is not a valid float")
    recipe("range.yaml", "lora:\n  lora_dropout: 1.5\n", r"lora_dropout: must be in \[0, 1\)")
    recipe("broken.yaml", "lora: [1, 2\n", "not valid YAML")
    recipe("list.yaml", "- 1\n- 2\n", "a recipe must be a mapping")
    recipe("section.yaml", "lora: 3\n", "lora: expected a section of settings")
    refused(["--config", str(tmp_path / "none.yaml")], "recipe file not found")


def _model_copy(src: Path, dst: Path, skip=()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip))
    return dst


def test_bad_model_folders(tmp_path, tiny_model_dir, refused):
    no_weights = _model_copy(tiny_model_dir, tmp_path / "no-weights", skip=("*.safetensors",))
    refused(["--model", str(no_weights)], r"has no model weights")
    refused(["--model", str(tmp_path / "absent")], r"no such model folder")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    refused(["--model", str(empty)], r"cannot load the tokenizer from this folder")
    # A tokenizer from another model: more tokens than the embedding matrix has rows.
    big_vocab = _model_copy(tiny_model_dir, tmp_path / "big-vocab")
    cfg = json.loads((big_vocab / "config.json").read_text())
    cfg["vocab_size"] = 150
    (big_vocab / "config.json").write_text(json.dumps(cfg))
    line = refused(["--model", str(big_vocab)], r"the tokenizer has \d+ tokens but the model's vocabulary has 150")
    assert str(big_vocab) in line
    broken = _model_copy(tiny_model_dir, tmp_path / "broken-config")
    (broken / "config.json").write_text("{not json")
    refused(["--model", str(broken)], r"cannot load the \w+ from this folder \(.*config\.json.* not a valid JSON")


def test_unwritable_output_folder(tmp_path, refused, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    refused(["--output-dir", str(a_file)], "exists and is not a folder", output=a_file)
    refused(["--output-dir", str(a_file / "run")], r"output folder is not writable", output=a_file / "run")
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode: make the probe fail as it would
            import budgetlora.core.files as rundir

            def denied(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(rundir.tempfile, "NamedTemporaryFile", denied)
        refused(["--output-dir", str(locked)], r"readonly: output folder is not writable \(Permission denied\)", output=locked)
    finally:
        locked.chmod(0o755)


def test_resume_mistakes(tmp_path, refused, reference):
    refused(["--resume", str(tmp_path / "nothing-here")], "nothing to resume \\(no config.yaml\\)")
    refused(["--resume", str(reference)], "this run has already finished; nothing to resume")


def test_new_run_into_an_interrupted_run_is_refused(tmp_path, base_args, refused, capsys):
    run = tmp_path / "interrupted"
    run.mkdir()
    (run / ckpt.CKPT_DIR / "step-3").mkdir(parents=True)
    (run / ckpt.CKPT_DIR / "step-3" / "state.json").write_text("{}")
    refused([*base_args, "--output-dir", str(run)], r"holds an interrupted run \(checkpoints/step-3\); "
            rf"continue it with `budgetlora train --resume {re.escape(str(run))}`, or pass --overwrite")
    assert (run / ckpt.CKPT_DIR / "step-3" / "state.json").exists()
    # --overwrite starts again and drops the old run's checkpoints.
    assert main(["train", *base_args, "--output-dir", str(run), "--overwrite", "--epochs", "1", "--save-every", "5"]) == 0
    assert _complete_ckpts(run) == ["step-5", "step-6"]


def test_empty_texts_are_dropped_and_a_megabyte_text_is_truncated(tmp_path, tiny_model_dir, caplog):
    import resource

    rows = ["label,text"] + [f"{i % 4},word{i} election match shares chip" for i in range(40)]
    rows += ['0,""', '1,"   "', '2,"\t"', "3," + "chip " * 200_000]  # 3 empty texts and a 1 MB one
    path = _csv(tmp_path, "texts.csv", "\n".join(rows) + "\n")
    assert os.path.getsize(path) > 1_000_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with caplog.at_level("WARNING"):
        rc = main(["train", "--model", str(tiny_model_dir), "--train-file", path, "--output-dir",
                   str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "8", "--r", "2", "--precision", "fp32"])
    assert rc == 0
    assert "dropped 3 row(s) with an empty text" in caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_rows"] + metrics["eval_rows"] == 41
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB for a 1 MB text"


def test_debug_shows_the_traceback(tmp_path, tiny_model_dir, capsys):
    args = ["train", "--model", str(tiny_model_dir), "--train-file", str(tmp_path / "nope.csv"),
            "--output-dir", str(tmp_path / "run")]
    with pytest.raises(DataError, match="file not found"):
        main(["--debug", *args])
    with pytest.raises(DataError, match="file not found"):
        main([*args, "--debug"])
    done = _run([*args, "--debug"])
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "budgetlora.errors.DataError" in done.stderr


# ---------------------------------------------------------------------------------------------
# 5. Security defaults
# ---------------------------------------------------------------------------------------------


def test_pickle_weights_only_with_the_flag(tmp_path, tiny_model_dir, refused):
    from budgetlora.modeling import build_classifier

    folder = _model_copy(tiny_model_dir, tmp_path / "pickled", skip=("*.safetensors",))
    torch.save(load_file(str(tiny_model_dir / "model.safetensors")), folder / "pytorch_model.bin")
    refused(["--model", str(folder)], r"only pickle weights \(pytorch_model\.bin\) found; convert them to "
                                      r"safetensors or pass --allow-pickle-weights")
    assert ModelConfig().allow_pickle_weights is False
    model = build_classifier(ModelConfig(model=str(folder), allow_pickle_weights=True), 4)
    safe = build_classifier(ModelConfig(model=str(tiny_model_dir)), 4)
    a = dict(model.named_parameters())
    for name, p in safe.named_parameters():
        if "classifier" not in name:  # the pretrained part loaded from the pickle
            assert torch.equal(p, a[name]), name


def test_remote_code_is_not_run_by_default(tmp_path, tiny_model_dir, refused):
    from budgetlora.core.hub import load_hf_config

    assert ModelConfig().trust_remote_code is False
    assert load_config(None, {"output_dir": "x"}).model.trust_remote_code is False
    marker = tmp_path / "RAN"
    folder = _model_copy(tiny_model_dir, tmp_path / "remote")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evil-model", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                    "from transformers import PretrainedConfig\n"
                                    "class EvilConfig(PretrainedConfig):\n    model_type = 'evil-model'\n")
    with pytest.raises(ModelLoadError):
        load_hf_config(ModelConfig(model=str(folder)), 4)
    refused(["--model", str(folder)], "cannot load the")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Fuzz: the loaders not fuzzed in test_data_readers.py (recipes, parquet, model config, log.jsonl):
# any bytes give a value or the loader's clear one-line error, never another exception.
# ---------------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
_YAMLISH = st.text(alphabet="abcdelorstx_:-[]{}, \n0123456789.'\"#&*!|>%@", max_size=120)


@_FUZZ
@given(data=st.one_of(st.binary(max_size=200), _YAMLISH.map(str.encode),
                      st.sampled_from(["lora:\n  r: ", "train:\n  lr: ", "budget: ", "epochs: ", "model: "])
                      .flatmap(lambda k: _YAMLISH.map(lambda v: (k + v).encode()))))
def test_fuzz_recipe(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipe.yaml"
        path.write_bytes(data)
        try:
            cfg = load_config(path)
        except ConfigError as e:
            assert "\n" not in str(e).strip(), str(e)
            return
        cfg.validate()


@_FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.sampled_from([b"PAR1", b"PAR1\x00\x00PAR1"]).flatmap(
    lambda head: st.binary(max_size=100).map(lambda tail: head + tail + b"PAR1"))), require_labels=st.booleans())
def test_fuzz_parquet(data, require_labels):
    from budgetlora.data import TextSet, load_file

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.parquet"
        path.write_bytes(data)
        try:
            ts = load_file(path, require_labels=require_labels)
        except DataError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return
        assert isinstance(ts, TextSet)


@_FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.text(alphabet='{}[]":, 0123456789abelmnostvy_.-', max_size=120)
                      .map(str.encode)))
def test_fuzz_model_config(data):
    from budgetlora.core.hub import load_hf_config

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_bytes(data)
        try:
            load_hf_config(ModelConfig(model=d), 4)
        except ModelLoadError as e:
            assert "\n" not in str(e), str(e)


@_FUZZ
@given(lines=st.lists(st.one_of(st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                                st.builds(lambda s, x: json.dumps({"step": s, "x": x}),
                                          st.one_of(st.integers(-3, 20), st.text(max_size=3), st.none()), st.floats())),
                      max_size=12), keep=st.integers(0, 15))
def test_fuzz_log_truncation_on_resume(lines, keep):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
        JsonlLog(path, keep_up_to_step=keep)  # never raises, whatever a kill or a user left there
        for line in path.read_text(encoding="utf-8").splitlines():
            step = json.loads(line).get("step", 0)
            assert isinstance(step, (int, float)) and step <= keep
