"""`budgetlora plan --measure K`: the planner's ranking checked against training.

The first K candidates train briefly, by successive halving on the validation split: every
candidate trains from scratch on the first `rows` training rows (one epoch) and is scored on the
same validation rows; the better half goes on to twice the rows, and so on until two are left.
The measured ranking orders candidates by the last round they reached, then by their accuracy in
it; Spearman's rank correlation compares it with the planner's order.

Every candidate trains with budgetlora's defaults and one learning rate (by default the one the
defaults give the planned LoRA adapter, budget.defaults.PLANNED_LR), so only the adapter differs
between them. That rate suits LoRA and DoRA; other methods train best at other rates
(docs/METHODS.md), so `--method lora` is the fair way to check the planner's LoRA ranking.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from budgetlora.budget.defaults import PLANNED_LR
from budgetlora.budget.planner import Candidate
from budgetlora.config import from_dict
from budgetlora.errors import ConfigError

Progress = Callable[[str], None]
LR_METHODS = ("lora", "dora")  # the methods PLANNED_LR was measured for


@dataclass
class Measured:
    """One candidate's results: its place in the planner's order, and its accuracy per round."""

    heuristic_rank: int  # 1 = the planner's first
    candidate: Candidate
    accuracy: dict[int, float] = field(default_factory=dict)  # training rows -> validation accuracy
    samples_per_second: dict[int, float] = field(default_factory=dict)
    measured_rank: int = 0

    @property
    def last_round(self) -> tuple[int, float]:
        rows = max(self.accuracy)
        return rows, self.accuracy[rows]

    def as_json(self) -> dict[str, Any]:
        c = self.candidate
        return {"heuristic_rank": self.heuristic_rank, "measured_rank": self.measured_rank,
                "accuracy_by_rows": {str(k): v for k, v in self.accuracy.items()},
                "samples_per_second_by_rows": {str(k): v for k, v in self.samples_per_second.items()},
                "method": c.method, "size": c.size, "head": c.head, "target_modules": c.target_modules,
                "layers": c.layers, "r": c.r, "use_dora": c.use_dora, "trainable_params": c.trainable_params}


@dataclass
class Measurement:
    results: list[Measured]  # in the planner's order
    rounds: list[int]  # training rows of each round
    eval_rows: int
    lr: float
    spearman: float
    spearman_p: float

    def as_json(self) -> dict[str, Any]:
        return {"rounds_rows": self.rounds, "eval_rows": self.eval_rows, "lr": self.lr,
                "spearman_rho": self.spearman, "spearman_p": self.spearman_p,
                "candidates": [m.as_json() for m in self.results]}


@dataclass(frozen=True)
class MeasureSettings:
    """What `--measure` trains on and how much."""

    train_file: str
    rows: int = 256  # training rows of the first round
    eval_rows: int = 500
    seed: int = 42
    lr: float = PLANNED_LR
    out_dir: Optional[str] = None  # default: a new temporary folder

    def check(self) -> None:
        if self.rows < 1 or self.eval_rows < 1:
            raise ConfigError("--measure-rows and --measure-eval-rows: give positive numbers of rows")
        if self.lr <= 0:
            raise ConfigError(f"--measure-lr: must be positive, got {self.lr:g}")


def rounds_for(k: int, rows: int) -> list[int]:
    """Training rows per round: `rows`, then twice as many, until two candidates are left."""
    out, alive = [rows], k
    while alive > 2:
        alive = math.ceil(alive / 2)
        out.append(out[-1] * 2)
    return out


def measure(model: str, candidates: list[Candidate], k: int, budget: int, settings: MeasureSettings,
            progress: Optional[Progress] = None) -> Measurement:
    """Successive halving over the first `k` candidates; see the module's docstring."""
    from scipy.stats import spearmanr

    if k < 2:
        raise ConfigError("--measure: compare at least 2 candidates")
    settings.check()
    results = [Measured(i + 1, c) for i, c in enumerate(candidates[:k])]
    if len(results) < 2:
        raise ConfigError(f"--measure: {len(results)} configuration(s) fit the budget; nothing to rank")
    say = progress or (lambda msg: None)
    base = Path(settings.out_dir) if settings.out_dir else Path(tempfile.mkdtemp(prefix="budgetlora-measure-"))
    alive, rounds = list(results), rounds_for(len(results), settings.rows)
    for n in rounds:
        for m in alive:
            say(f"{n} rows: candidate {m.heuristic_rank} ({_short(m.candidate)})")
            out = base / f"rows-{n}" / f"c{m.heuristic_rank}"
            m.accuracy[n], m.samples_per_second[n] = _train_one(model, m.candidate, n, budget, settings, out)
        alive.sort(key=lambda m: -m.accuracy[n])  # stable: ties keep the planner's order
        alive = alive[:max(2, math.ceil(len(alive) / 2))] if n != rounds[-1] else alive
    ranked = sorted(results, key=lambda m: (-m.last_round[0], -m.last_round[1], m.heuristic_rank))
    for place, m in enumerate(ranked, 1):
        m.measured_rank = place
    rho, p = spearmanr([m.heuristic_rank for m in results], [m.measured_rank for m in results])
    return Measurement(results, rounds, settings.eval_rows, settings.lr, float(rho), float(p))


def _short(c: Candidate) -> str:
    layers = "all" if c.layers is None else f"{c.layers[0]}-{c.layers[-1]}"
    return f"{c.method} {c.size_text}, {c.head} head, {c.targets_text}, layers {layers}"


def _train_one(model: str, c: Candidate, rows: int, budget: int, s: MeasureSettings, out: Path) -> tuple[float, float]:
    """One brief run of a candidate: (validation accuracy at the end, training samples/s)."""
    from budgetlora.training.trainer import train

    cfg = from_dict({"model": model, "budget": budget, "train_file": s.train_file, "max_train_samples": rows,
                     "max_eval_samples": s.eval_rows, "epochs": 1, "lr": s.lr, "seed": s.seed, "output_dir": str(out),
                     "overwrite": True}, base=c.run_config())
    metrics = train(cfg.validate(), command="budgetlora plan --measure")
    return float(metrics.final_eval_accuracy), float(metrics.train_samples_per_second)


def format_measurement(m: Measurement) -> list[str]:
    """The measured ranking beside the planner's, one row per candidate, and the correlation."""
    head = ["", f"measured: successive halving on {m.eval_rows} validation rows, rounds of "
                f"{', '.join(map(str, m.rounds))} training rows (1 epoch each, lr {m.lr:g}):", ""]
    cols = ["plan #", "measured #", "candidate"] + [f"acc@{n}" for n in m.rounds]
    rows = [cols]
    for r in sorted(m.results, key=lambda r: r.measured_rank):
        rows.append([str(r.heuristic_rank), str(r.measured_rank), _short(r.candidate)]
                    + [f"{r.accuracy[n]:.4f}" if n in r.accuracy else "-" for n in m.rounds])
    widths = [max(len(row[j]) for row in rows) for j in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) if j == 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    tail = ["", f"Spearman rank correlation, planner vs measured: rho = {m.spearman:.3f} "
                f"(p = {m.spearman_p:.3g}, {len(m.results)} candidates)"]
    others = sorted({r.candidate.method for r in m.results} - set(LR_METHODS))
    if others:  # one rate for all: a method tuned for another rate loses here for that alone
        tail.append(f"note: {', '.join(others)} trained at lr {m.lr:g} like the rest; their best rates differ "
                    "(docs/METHODS.md), so their places say little; --method lora ranks LoRA alone")
    return head + lines + tail
