"""`budgetlora plan --measure K`: the first K candidates trained briefly by successive halving, the
measured ranking printed beside the planner's with Spearman's rank correlation."""

from __future__ import annotations

import json

import pytest

from budgetlora.budget import load_config_only
from budgetlora.budget.planner import plan
from budgetlora.cli import main
from budgetlora.commands.measure import (
    MeasureSettings, Measured, Measurement, format_measurement, measure, rounds_for,
)
from budgetlora.errors import ConfigError


def test_rounds_double_the_rows_until_two_candidates_are_left():
    assert rounds_for(8, 256) == [256, 512, 1024]  # 8 -> 4 -> 2
    assert rounds_for(5, 10) == [10, 20, 40]  # 5 -> 3 -> 2
    assert rounds_for(3, 10) == [10, 20]
    assert rounds_for(2, 10) == [10]


def test_measure_ranks_the_candidates_by_training(tiny_model_dir, tiny_train_csv, tmp_path, capsys):
    args = ["plan", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv), "--measure", "3",
            "--measure-rows", "16", "--measure-eval-rows", "16", "--method", "lora",
            "--measure-dir", str(tmp_path / "m")]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    planned, m = out["candidates"], out["measured"]
    assert m["rounds_rows"] == [16, 32] and m["eval_rows"] == 16 and m["lr"] == 2e-3
    rows = m["candidates"]
    assert [r["heuristic_rank"] for r in rows] == [1, 2, 3]
    assert sorted(r["measured_rank"] for r in rows) == [1, 2, 3]
    for r, c in zip(rows, planned):  # the measured ones are the planner's first three
        assert (r["method"], r["head"], r["target_modules"], r["r"]) == (c["method"], c["head"], c["target_modules"], c["r"])
        assert 0.0 <= r["accuracy_by_rows"]["16"] <= 1.0 and r["samples_per_second_by_rows"]["16"] > 0
    finalists = [r for r in rows if "32" in r["accuracy_by_rows"]]
    assert len(finalists) == 2 and {r["measured_rank"] for r in finalists} == {1, 2}
    # the one left out had the lowest first-round accuracy
    out_one = next(r for r in rows if "32" not in r["accuracy_by_rows"])
    assert out_one["accuracy_by_rows"]["16"] <= min(r["accuracy_by_rows"]["16"] for r in finalists)
    assert -1.0 <= m["spearman_rho"] <= 1.0

    assert main([*args, "--measure-lr", "0.001"]) == 0  # the table: the measured ranking beside the planner's
    text = capsys.readouterr().out
    assert "plan #" in text and "measured #" in text and "Spearman rank correlation" in text
    assert "lr 0.001" in text and "note:" not in text  # LoRA alone: no word about other methods' rates


def test_one_rate_for_every_method_is_said(tiny_model_dir):
    cands, _ = plan(load_config_only(str(tiny_model_dir), 4), 20_000, 4, ["lora", "vera"])
    lora, vera = next(c for c in cands if c.method == "lora"), next(c for c in cands if c.method == "vera")
    m = Measurement([Measured(1, lora, {8: 0.5}, {8: 1.0}, 2), Measured(2, vera, {8: 0.6}, {8: 1.0}, 1)],
                    [8], 8, 2e-3, -1.0, 1.0)
    text = "\n".join(format_measurement(m))
    assert "note: vera trained at lr 0.002" in text and "--method lora" in text


def test_measure_needs_a_train_file(tiny_model_dir, capsys):
    assert main(["plan", "--model", str(tiny_model_dir), "--measure", "4"]) == 2
    assert "--train-file" in capsys.readouterr().err


def test_measure_refuses_in_one_line_a_budget_with_fewer_than_two_candidates(tiny_model_dir, tiny_train_csv, capsys):
    args = ["plan", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv), "--measure", "4",
            "--budget", "10"]  # nothing fits
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0 configuration(s) fit the budget; nothing to rank" in err
    one, _ = plan(load_config_only(str(tiny_model_dir), 4), 20_000, 4, ["lora"])
    with pytest.raises(ConfigError, match="1 configuration"):
        measure(str(tiny_model_dir), one[:1], 4, 20_000, MeasureSettings(str(tiny_train_csv)))
