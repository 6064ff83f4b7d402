"""The loop's progress: everything a checkpoint must carry to continue a run exactly.

Two small records, each with `state_dict()`: `TrainState` is where the run stands (steps, epoch
position, counts, best validation accuracy); `LogWindow` holds the running sums of the training
loss and accuracy since the last log record, kept apart because they belong to logging, not to
progress. A checkpoint stores both in one flat `state.json`, the layout earlier versions wrote, so
their checkpoints still resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    """Where the run stands."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    samples_seen: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time inside training steps, evaluation excluded
    best_eval_accuracy: float = -1.0
    best_step: int = 0
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # evaluation records, for curves

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "TrainState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def record_eval(self, accuracy: float) -> bool:
        """Count one evaluation; True when it is the best so far (its adapter is then kept)."""
        if accuracy > self.best_eval_accuracy:
            self.best_eval_accuracy, self.best_step = accuracy, self.step
            self.evals_without_improvement = 0
            return True
        self.evals_without_improvement += 1
        return False


@dataclass
class LogWindow:
    """Training loss and accuracy summed over the micro-batches since the last log record."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, loss: float, correct: int, rows: int) -> None:
        """One micro-batch: its mean loss, correct predictions and rows."""
        self.add_sums(loss * rows, correct, rows)

    def add_sums(self, loss_sum: float, correct: int, rows: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.seen += rows

    def take(self) -> tuple[float, float]:
        """(mean loss, accuracy) over the window, which starts afresh."""
        means = self.loss_sum / max(self.seen, 1), self.correct / max(self.seen, 1)
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0
        return means

    # The checkpoint's key names, as earlier versions wrote them inside the train state.
    def state_dict(self) -> dict[str, Any]:
        return {"window_loss_sum": self.loss_sum, "window_correct": self.correct, "window_seen": self.seen}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "LogWindow":
        return cls(d.get("window_loss_sum", 0.0), d.get("window_correct", 0), d.get("window_seen", 0))
