"""The loop's progress: everything a checkpoint must carry to continue a run exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """Everything about the loop's progress that a checkpoint must carry."""

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
    window_loss_sum: float = 0.0  # running sums since the last log record
    window_correct: int = 0
    window_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # evaluation records, for curves
