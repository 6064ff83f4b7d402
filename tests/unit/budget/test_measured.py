"""budget.measured: the equal-budget comparison's figures, and how the planner's ranking uses them."""

from __future__ import annotations

import pytest

from budgetlora.budget import measured
from budgetlora.budget.measured import Measurements, from_json, to_json
from budgetlora.config import METHODS
from test_budget import _tiny

TABLE = Measurements(model="m", setup="s", accuracy={
    20_000: {"lora": 0.80, "vera": 0.805, "ia3": 0.79},
    1_000_000: {"lora": 0.90, "loha": 0.92},
})


def test_nearest_budget_is_nearest_on_a_log_scale():
    assert TABLE.nearest_budget(100_000) == 20_000  # 5x above 20k, 10x below 1M
    assert TABLE.nearest_budget(200_000) == 1_000_000  # 10x above, 5x below
    assert TABLE.nearest_budget(10**9) == 1_000_000
    assert Measurements().nearest_budget(1_000) is None


def test_clearly_worse_needs_a_full_point_below_the_best():
    assert not TABLE.clearly_worse("lora", 20_000)  # 0.5 points below VeRA: noise
    assert TABLE.clearly_worse("ia3", 20_000)
    assert TABLE.clearly_worse("lora", 1_000_000)
    assert not TABLE.clearly_worse("dora", 20_000)  # not measured: no verdict
    assert not Measurements().clearly_worse("lora", 20_000)


def test_json_round_trip():
    assert from_json(to_json(TABLE)) == TABLE


def test_the_shipped_comparison_loads_and_names_real_methods():
    found = measured.shipped()
    assert found.accuracy, "measured_methods.json is missing from the package"
    for per in found.accuracy.values():
        assert set(per) <= set(METHODS)
        assert all(0.0 <= a <= 1.0 for a in per.values())


def test_a_method_measured_clearly_worse_is_listed_after_the_others(monkeypatch):
    from budgetlora.budget.planner import plan

    cfg = _tiny("bert", 4, {"num_hidden_layers": 2})
    budget = 3_000
    for worse, better in (("lora", "vera"), ("vera", "lora")):
        table = Measurements(accuracy={budget: {worse: 0.85, better: 0.9}})
        monkeypatch.setattr(measured, "shipped", lambda table=table: table)
        found, _ = plan(cfg, budget, methods=["lora", "vera"])
        linear = [c.method for c in found if c.head == "linear"]
        assert worse in linear and better in linear
        assert linear.index(worse) > max(i for i, m in enumerate(linear) if m == better)


@pytest.mark.parametrize("budget", [20_000, 150_000, 1_000_000])
def test_plan_shows_the_measured_column(budget, tmp_path):
    from budgetlora.commands.plan import format_table
    from budgetlora.budget.planner import plan

    cfg = _tiny("bert", 4, {"num_hidden_layers": 2})
    candidates, tried = plan(cfg, budget, methods=["lora"])
    text = format_table("tiny", cfg, candidates, tried, budget, 4, 3)
    assert "measured" in text.splitlines()[3]
    assert "equal-budget comparison" in text


def test_plan_json_carries_the_measured_accuracy(monkeypatch):
    from budgetlora.budget.planner import plan

    cfg = _tiny("bert", 4, {"num_hidden_layers": 2})
    monkeypatch.setattr(measured, "shipped", lambda: Measurements(accuracy={3_000: {"lora": 0.9}}))
    found, _ = plan(cfg, 3_000, methods=["lora", "vera"])
    by_method = {c.method: c.as_json("m", 3_000)["measured_accuracy"] for c in found}
    assert by_method == {"lora": 0.9, "vera": None}
