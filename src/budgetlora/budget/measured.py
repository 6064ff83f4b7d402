"""What the equal-budget comparison of the methods measured, for the planner's ranking.

The comparison (docs/METHODS.md, `docs/experiments/methods_table_minilm.py --write-measured`)
trains every method's first plan candidate at a few budgets on the same rows and writes each
method's validation accuracy per budget to `measured_methods.json` beside this module. The planner
reads it to list a method after the others where it measured clearly worse at the nearest measured
budget: the heuristic score prices capacity and coverage, not how well a method's parameters learn
(FourierFT and prompt tuning scored points below LoRA at the same count while the score ranked
them close).

It was measured on one model (all-MiniLM-L6-v2); it is applied to every model as the only
evidence there is, and `plan` says so where it shows a measured figure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Optional

# How far below the best method at a budget a method must measure to be listed after the others:
# about one and a half standard errors of the difference of two accuracies on the comparison's
# 2,000 validation rows, so that differences inside the noise do not reorder the plan.
CLEARLY_WORSE = 0.01


@dataclass(frozen=True)
class Measurements:
    """Validation accuracy per budget and method from one equal-budget comparison."""

    model: str = ""
    setup: str = ""  # rows, epochs and how the rates were chosen, in words
    accuracy: dict[int, dict[str, float]] = field(default_factory=dict)

    def nearest_budget(self, budget: int) -> Optional[int]:
        """The measured budget closest to `budget` on a log scale (budgets span orders of magnitude)."""
        if not self.accuracy or budget < 1:
            return None
        return min(self.accuracy, key=lambda b: (abs(math.log(b / budget)), b))

    def accuracy_of(self, method: str, budget: int) -> Optional[float]:
        """`method`'s accuracy at the measured budget nearest `budget`; None if not measured there."""
        near = self.nearest_budget(budget)
        return None if near is None else self.accuracy[near].get(method)

    def clearly_worse(self, method: str, budget: int) -> bool:
        """Whether `method` measured at least CLEARLY_WORSE below the best method at the nearest budget."""
        near = self.nearest_budget(budget)
        mine = self.accuracy_of(method, budget)
        if near is None or mine is None:
            return False
        return mine <= max(self.accuracy[near].values()) - CLEARLY_WORSE


def from_json(text: str) -> Measurements:
    data = json.loads(text)
    accuracy = {int(b): {m: float(a) for m, a in per.items()} for b, per in data.get("accuracy", {}).items()}
    return Measurements(model=data.get("model", ""), setup=data.get("setup", ""), accuracy=accuracy)


def to_json(m: Measurements) -> str:
    return json.dumps({"model": m.model, "setup": m.setup,
                       "accuracy": {str(b): {k: round(v, 4) for k, v in sorted(per.items())}
                                    for b, per in sorted(m.accuracy.items())}},
                      indent=2) + "\n"


@lru_cache(maxsize=1)
def shipped() -> Measurements:
    """The comparison shipped with the package (empty when the file is missing)."""
    path = resources.files("budgetlora.budget") / "measured_methods.json"
    return from_json(path.read_text()) if path.is_file() else Measurements()
