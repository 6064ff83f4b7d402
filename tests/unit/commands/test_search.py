"""`budgetlora search` on the tiny model: budget pruning before training, resumable studies, exact flags."""

from __future__ import annotations

import json
import shlex
import signal

import pytest
import yaml

from budgetlora.commands import search
from budgetlora.cli import build_parser, config_overrides, main
from budgetlora.config import load_config
from budgetlora.errors import ConfigError
from budgetlora.training.trainer import train

HUGE_R = 100_000  # 25.6M LoRA parameters on the tiny model: far over any budget



def _space(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, **extra):
    doc = {
        "base": {
            "model": {"model": str(tiny_model_dir), "head": "linear"},
            "lora": {"target_modules": ["query", "value"], "lora_alpha": 8},
            "data": {"train_file": str(tiny_train_csv), "eval_file": str(tiny_eval_csv)},
            "train": {"batch_size": 16, "seed": 7, "precision": "fp32", "log_every": 2, "eval_every": 2},
        },
        "seed": 8,  # draws r = 2, HUGE_R, 4 for trials 0-2 (each trial seeded by (seed, its number))
        "space": {
            "r": {"type": "categorical", "choices": [2, 4, HUGE_R]},
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "target_modules": {"type": "categorical", "choices": [["query", "value"], ["value"]]},
        },
        **extra,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_search_prunes_over_budget_trials_untrained_and_resumes(
    tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, capsys
):
    space = _space(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv)
    study = tmp_path / "study"
    args = ["search", "--space", str(space), "--study-dir", str(study), "--trials", "3",
            "--epochs", "1", "--max-train-samples", "64"]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((study / "search.json").read_text())
    trials = summary["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    huge = [t for t in trials if t["params"]["r"] == HUGE_R]
    small = [t for t in trials if t["params"]["r"] != HUGE_R]
    assert len(huge) == 1 and len(small) == 2  # the seed makes exactly one draw of the huge rank
    pruned = huge[0]
    assert pruned["state"] == "PRUNED" and pruned["pruned_reason"].startswith("over budget")
    assert pruned["trainable_params"] >= 1_000_000
    assert not (study / f"trial-{pruned['number']}" / "adapter").exists()  # pruned before training
    assert not (study / f"trial-{pruned['number']}" / "config.yaml").exists()
    for t in small:
        assert t["state"] == "COMPLETE" and 0.0 <= t["value"] <= 1.0
        metrics = json.loads((study / f"trial-{t['number']}" / "metrics.json").read_text())
        assert t["value"] == metrics["best_eval_accuracy"]  # scored on the validation rows
        assert t["trainable_params"] == metrics["trainable_params"] < 1_000_000
        assert t["intermediate_values"]  # every evaluation was reported to the pruner
        assert metrics["train_rows"] == 64  # --max-train-samples applied to every trial
        assert (study / f"trial-{t['number']}" / "cache").resolve() == (study / "cache").resolve()
    assert list((study / "cache").glob("tokens-*.npz"))  # one token cache for the whole study
    best = summary["best"]
    assert best["value"] == max(t["value"] for t in small)
    assert summary["counts"] == {"complete": 2, "pruned": 1, "fail": 0, "running": 0, "over_budget": 1}
    assert best["train_command"] in out and "best: trial" in out

    # The printed command rebuilds the best trial's configuration exactly.
    cmd = shlex.split(best["train_command"])
    assert cmd[:2] == ["budgetlora", "train"]
    ns = build_parser().parse_args(cmd[1:])
    rebuilt = load_config(ns.config, config_overrides(ns)).to_dict()
    saved = load_config(study / f"trial-{best['number']}" / "config.yaml").to_dict()
    for d in (rebuilt, saved):
        d.pop("output_dir"), d.pop("overwrite")
    assert rebuilt == saved

    # Running again with more trials continues the study: earlier trials are kept as they were.
    assert main(args[:-4] + ["--trials", "4"] + args[-4:]) == 0
    again = json.loads((study / "search.json").read_text())
    assert len(again["trials"]) == 4
    for before, after in zip(trials, again["trials"]):
        assert {k: before[k] for k in ("number", "state", "value", "params")} == {
            k: after[k] for k in ("number", "state", "value", "params")}
    # ...and with as many finished trials as asked for, nothing more runs.
    assert main(args[:-4] + ["--trials", "4"] + args[-4:]) == 0
    assert len(json.loads((study / "search.json").read_text())["trials"]) == 4


def test_on_eval_hook_can_stop_a_run_and_search_restores_signal_handlers(tmp_path, tiny_model_dir, tiny_train_csv):
    class Stop(Exception):
        pass

    seen = []

    def on_eval(step, acc):
        seen.append((step, acc))
        raise Stop

    cfg = load_config(None, {"model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "max_train_samples": 64,
                             "batch_size": 16, "eval_every": 1, "output_dir": str(tmp_path / "run"), "precision": "fp32"})
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Stop), search._signals_restored():
        train(cfg, on_eval=on_eval)
    assert signal.getsignal(signal.SIGINT) is before
    assert seen and seen[0][0] == 1 and 0.0 <= seen[0][1] <= 1.0
    assert not (tmp_path / "run" / "metrics.json").exists()  # an unfinished run, as a pruned trial is


@pytest.mark.parametrize("space, message", [
    ({"lrr": {"type": "float", "low": 1, "high": 2}}, "did you mean 'lr'"),
    ({"lr": {"type": "uniform", "low": 1, "high": 2}}, "type: float|int|categorical"),
    ({"lr": {"type": "float", "low": 2, "high": 1}}, "low < high"),
    ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale"),
    ({"r": {"type": "int", "low": 1.5, "high": 4}}, "integers"),
    ({"r": {"type": "categorical", "choices": []}}, "non-empty"),
    ({"r": {"type": "categorical", "choices": [4, 0]}}, None),  # each choice is checked when it is trained
    ({"head": {"type": "categorical", "choices": ["linear", "big"]}}, "head"),
    ({"output_dir": {"type": "categorical", "choices": ["a"]}}, "cannot be searched"),
])
def test_space_files_are_checked_before_any_trial(tmp_path, space, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"space": space}), encoding="utf-8")
    if message is None:
        assert search.load_space(path).params
        return
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        search.load_space(path)


def test_search_refuses_a_flag_that_is_also_searched(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv, capsys):
    space = _space(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv)
    assert main(["search", "--space", str(space), "--study-dir", str(tmp_path / "s"), "--trials", "1", "--lr", "0.1"]) == 2
    assert "both searched and given" in capsys.readouterr().err
    assert main(["search", "--space", str(space), "--study-dir", str(tmp_path / "s"), "--output-dir", "x"]) == 2
    assert "--study-dir" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: missing.yaml\nspace: {lr: {type: float, low: 0.1, high: 1}}\n", encoding="utf-8")
    assert main(["search", "--space", str(bad), "--study-dir", str(tmp_path / "s")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_flag_values_round_trip_through_the_config_parser():
    from budgetlora.config import coerce

    for name, value in [("target_modules", ["query"]), ("target_modules", ["query", "value"]),
                        ("target_modules", "all-linear"), ("layers", [3]), ("lr", 1.2345678901234e-4),
                        ("rank_pattern", {"query": 4}), ("head_lr", None), ("use_dora", True), ("r", 12)]:
        assert coerce(name, search.flag_value(value)) == value, (name, value)
