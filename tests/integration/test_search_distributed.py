"""`budgetlora search --storage postgresql://...`: worker processes share one study on a real
PostgreSQL server (.ci/postgres.sh; BUDGETLORA_TEST_PG_URL when CI started one already).

Each test uses its own study name in the one database, so they do not see each other's trials."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HUGE_R = 100_000  # over any budget on the tiny model: pruned before training
TRIALS = 6
HEARTBEAT_S = 2  # a killed worker's trial is called dead after 3 missed beats: 6 s


@pytest.fixture(scope="module")
def pg_url():
    """The test database's URL: BUDGETLORA_TEST_PG_URL, or a throwaway server started here."""
    url = os.environ.get("BUDGETLORA_TEST_PG_URL")
    if url:
        yield url
        return
    # Not pytest's tmp_path: its folders are private to this user, and the server runs as `postgres`.
    folder = tempfile.mkdtemp(prefix="budgetlora-pg.")
    script = str(REPO / ".ci" / "postgres.sh")
    started = subprocess.run(["bash", script, "start", folder], capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        why = (started.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"no PostgreSQL server could be started ({why}); apt-get install postgresql, "
                    "or set BUDGETLORA_TEST_PG_URL")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", script, "stop", folder], capture_output=True, timeout=120)


def _space(tmp_path: Path, model: Path, train_csv: Path, eval_csv: Path) -> Path:
    doc = {
        "base": {
            "model": {"model": str(model), "head": "linear"},
            "lora": {"target_modules": ["query", "value"], "lora_alpha": 8},
            "data": {"train_file": str(train_csv), "eval_file": str(eval_csv)},
            "train": {"batch_size": 16, "seed": 7, "precision": "fp32", "log_every": 2, "eval_every": 4},
        },
        "seed": 1,  # trial 4 draws the huge rank (each trial's draws are seeded by its number)
        "space": {
            "r": {"type": "categorical", "choices": [2, 4, HUGE_R]},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        },
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _worker(space: Path, study_dir: Path, url: str, name: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "budgetlora.cli", "search", "--space", str(space), "--study-dir", str(study_dir),
           "--storage", url, "--study-name", name, "--heartbeat", str(HEARTBEAT_S), "--trials", str(TRIALS),
           "--epochs", "1", "--max-train-samples", "160"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(study_dir.parent))


def _study(url: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url)


def _states(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _reported(log: Path) -> set[int]:
    """Trial numbers this worker printed as ended."""
    return {int(n) for n in re.findall(r"^trial (\d+): ", log.read_text(), flags=re.M)}


def _check_trials(trials, study_dir: Path) -> list:
    """Every finished trial was trained at most once, in its own folder, with its own settings;
    over-budget ones were never trained. Returns the trials that trained."""
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == TRIALS
    assert _states(trials).get("RUNNING", 0) == 0 and _states(trials).get("WAITING", 0) == 0
    params = [(t.params["r"], t.params["lr"]) for t in finished]
    assert len(set(params)) == len(params)  # no configuration drawn twice (per-trial sampler seeds)
    huge = [t for t in trials if t.params.get("r") == HUGE_R]
    assert huge
    for t in huge:
        assert t.state.name == "PRUNED" and t.user_attrs["pruned_reason"].startswith("over budget")
        assert not (study_dir / f"trial-{t.number}").exists()  # pruned before training
    trained = [t for t in finished if t.params.get("r") != HUGE_R]
    folders = {p.name for p in study_dir.glob("trial-*")}
    for t in trained:
        assert t.user_attrs["run_dir"] == str(study_dir / f"trial-{t.number}")
        saved = yaml.safe_load((study_dir / f"trial-{t.number}" / "config.yaml").read_text())
        assert (saved["lora"]["r"], saved["train"]["lr"]) == (t.params["r"], t.params["lr"])
        if t.state.name == "COMPLETE":
            metrics = json.loads((study_dir / f"trial-{t.number}" / "metrics.json").read_text())
            assert metrics["best_eval_accuracy"] == t.value
    for t in trials:  # a trial that stepped back (two workers asked at once) never trained
        if t.state.name == "FAIL" and t.user_attrs.get("error", "").startswith("not run"):
            assert f"trial-{t.number}" not in folders
    return trained


def test_two_workers_share_one_study_and_train_every_trial_once(
    pg_url, tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv
):
    space = _space(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv)
    study_dir = tmp_path / "study"
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [_worker(space, study_dir, pg_url, name, log) for log in logs]
    codes = [w.wait(timeout=240) for w in workers]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    trials = _study(pg_url, name).get_trials()
    trained = _check_trials(trials, study_dir)
    assert len({t.user_attrs["worker"] for t in trained}) == 2  # both workers trained
    a, b = (_reported(log) for log in logs)
    assert not a & b and a | b == {t.number for t in trials}  # each trial ended in exactly one worker
    assert not [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("error", "").startswith("not run")]

    # Each worker's summary lists every worker's trials; compare shows every complete one.
    summary = json.loads((study_dir / "search.json").read_text())
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == TRIALS
    assert len(summary["workers"]) == 2 and "PASSWORD" not in summary["storage"]
    from budgetlora.commands.compare import compare

    rows, skipped = compare([study_dir])
    assert not skipped and len(rows) == summary["counts"]["complete"]


def test_a_killed_workers_trial_is_retried_and_the_study_completes(
    pg_url, tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv
):
    space = _space(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv)
    study_dir = tmp_path / "study"
    name = f"kill-{uuid.uuid4().hex[:8]}"
    victim = _worker(space, study_dir, pg_url, name, tmp_path / "victim.log")
    survivor = _worker(space, study_dir, pg_url, name, tmp_path / "survivor.log")
    try:
        killed = _kill_mid_trial(victim, pg_url, name)
        assert survivor.wait(timeout=240) == 0, (tmp_path / "survivor.log").read_text()[-2000:]
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
    trials = _study(pg_url, name).get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state.name == "FAIL"  # no heartbeat: failed by the survivor
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == by_number[killed].params
    assert retries[0].user_attrs["worker"].endswith(f":{survivor.pid}")
    _check_trials(trials, study_dir)
    summary = json.loads((study_dir / "search.json").read_text())
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == TRIALS
    assert {r["number"]: r["retry_of"] for r in summary["trials"]}[retries[0].number] == killed


def _kill_mid_trial(worker: subprocess.Popen, url: str, name: str) -> int:
    """kill -9 the worker once it is training a trial (its folder exists); the trial's number."""
    import optuna

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be killed mid-trial"
        try:
            trials = _study(url, name).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            trials = []
        for t in trials:
            run_dir = t.user_attrs.get("run_dir")
            if t.user_attrs.get("worker", "").endswith(f":{worker.pid}") and run_dir and Path(run_dir).is_dir():
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
                return t.number
        time.sleep(0.2)
    raise AssertionError("the worker never started training a trial")


def test_an_unreachable_database_is_one_line_and_exit_2(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv,
                                                       capsys):
    from budgetlora.cli import main

    space = _space(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv)
    args = ["search", "--space", str(space), "--study-dir", str(tmp_path / "s"), "--trials", "1"]
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    assert main(args + ["--storage", "postgresql://someone:PASSWORD@127.0.0.1:1/none"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("budgetlora: error: cannot reach the study database"), lines
    assert "127.0.0.1" in lines[0] and "PASSWORD" not in lines[0]
    assert not list((tmp_path / "s").glob("trial-*"))
    # Not a URL, or a dialect nobody knows: one line too, saying what a URL looks like.
    for bad in ("not a url", "nosuchdb://x/y"):
        assert main(args + ["--storage", bad]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "not a database URL" in lines[0] and "postgresql+psycopg://" in lines[0], lines
