"""The pieces of a shared study, without a server: sampler seeds, the surplus rule, trial folders,
database URLs. The workers on a real PostgreSQL are in tests/integration/test_search_distributed.py."""

from __future__ import annotations

import importlib.util
import json

import optuna
import pytest

from budgetlora.commands import search
from budgetlora.errors import ConfigError, RunDirError

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _draw(trial):
    return trial.suggest_float("lr", 1e-4, 1e-2, log=True) + trial.suggest_int("r", 1, 64)


def test_a_trials_draws_depend_on_its_number_not_on_the_worker_that_runs_it(tmp_path):
    alone = optuna.create_study(sampler=search.TrialSeededSampler(5))
    alone.optimize(_draw, n_trials=4)

    # Two workers (two Study objects, each with its own sampler) take turns on one study.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [optuna.create_study(storage=url, study_name="s", sampler=search.TrialSeededSampler(5),
                                   load_if_exists=True) for _ in range(2)]
    for n in range(4):
        workers[n % 2].optimize(_draw, n_trials=1)
    shared = workers[0].get_trials()
    assert [t.params for t in shared] == [t.params for t in alone.get_trials()]
    assert len({t.params["lr"] for t in shared}) == 4  # the workers did not draw the same values

    # One TPESampler(seed) per worker, as before: both workers' first trials are the same draw.
    twins = [optuna.create_study(sampler=optuna.samplers.TPESampler(seed=5)) for _ in range(2)]
    for study in twins:
        study.optimize(_draw, n_trials=1)
    assert twins[0].trials[0].params == twins[1].trials[0].params


def test_a_trial_created_after_enough_others_steps_back(tmp_path):
    study = optuna.create_study()
    objective = search._Objective(None, {}, tmp_path, 4, trials=2)
    first, second = study.ask(), study.ask()  # two running trials: all that is needed
    objective._check_needed(first)
    objective._check_needed(second)
    third = study.ask()
    with pytest.raises(search.NotNeeded):
        objective._check_needed(third)
    assert third.user_attrs["error"].startswith("not run")
    study.tell(third, state=optuna.trial.TrialState.FAIL)  # as study.optimize records it
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # one failed: a later trial is needed again
    objective._check_needed(study.ask())


def test_trial_folders_are_claimed_once(tmp_path):
    run_dir = tmp_path / "trial-3"
    search.claim_trial_folder(run_dir, 3, "s")
    assert run_dir.is_dir()
    with pytest.raises(RunDirError, match="own --study-dir"):
        search.claim_trial_folder(run_dir, 3, "s")


def test_database_urls_are_shown_without_password_and_checked(tmp_path):
    place = search.StudyPlace("postgresql://me:s3cret@db.example:5432/studies?host=/run/pg", "n", 60)
    shown = place.shown(tmp_path)
    assert "s3cret" not in shown and "db.example" in shown and "/run/pg" in shown
    assert search.StudyPlace().shown(tmp_path) == str(tmp_path / search.STUDY_DB)
    assert search.StudyPlace(heartbeat_s=7).grace_s == 3 * 7
    with pytest.raises(ConfigError, match="not a database URL"):
        search.open_storage(search.StudyPlace("nosuchdb://x/y"), tmp_path)
    if importlib.util.find_spec("MySQLdb") is None:  # mysql:// needs mysqlclient, not a dependency
        with pytest.raises(ConfigError, match="driver MySQLdb is not installed.*mysqlclient"):
            search.open_storage(search.StudyPlace("mysql://me:pw@127.0.0.1:1/x"), tmp_path)


def test_compare_shows_a_study_trial_trained_on_another_machine(tmp_path):
    from budgetlora.commands.compare import compare

    record = {"number": 3, "state": "COMPLETE", "value": 0.875, "run_dir": "/elsewhere/study/trial-3",
              "worker": "node7:4242", "model": "m", "head": "linear", "trainable_params": 1234,
              "train_runtime_s": 12.0, "train_samples_per_second": 50.0}
    pruned = {**record, "number": 4, "state": "PRUNED", "value": None}
    (tmp_path / "search.json").write_text(json.dumps({"trials": [record, pruned]}), encoding="utf-8")
    rows, skipped = compare([tmp_path])
    assert not skipped and len(rows) == 1
    assert rows[0]["run"] == "trial-3 (node7:4242)"
    assert (rows[0]["best_eval_accuracy"], rows[0]["trainable_params"]) == (0.875, 1234)


@pytest.mark.parametrize("touch_trial", [False, True])
def test_a_worker_whose_trial_was_called_dead_drops_its_result_and_goes_on(tmp_path, touch_trial):
    """A live worker too busy to send heartbeats: another one fails its trial and queues a copy;
    Optuna then refuses this worker's result. The worker drops it and keeps working."""
    storage = search.open_storage(search.StudyPlace(heartbeat_s=60), tmp_path)
    study = optuna.create_study(storage=storage, study_name=search.STUDY_NAME, direction="maximize")
    calls = []

    def objective(trial):
        calls.append(trial.number)
        if len(calls) == 1:  # what another worker's fail_stale_trials does to this trial
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            study._storage.get_heartbeat_stale_trial_callback()(study, study._storage.get_trial(trial._trial_id))
            if touch_trial:
                trial.set_user_attr("late", True)  # refused: the trial is finished
        return 0.5 + trial.number / 100

    assert search.work(study, objective, search.WorkPlan(trials=2, poll_s=0.01)) == 2
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].system_attrs["failed_trial"] == 0 and calls == [0, 1, 2]
