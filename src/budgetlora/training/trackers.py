"""Experiment trackers (`--report-to tensorboard,mlflow,wandb`) through Accelerate's tracking classes.

The trackers get what the run folder already holds: every log.jsonl record (training and
validation), the resolved settings and the budget breakdown. They are built from
`accelerate.tracking` directly rather than through `Accelerator(log_with=...)`, so the training
loop only has to call `log` where it writes log.jsonl, and an unknown or missing tracker is caught
before any data or weights are loaded.

Where each one writes:
- tensorboard: RUN/tensorboard (event files; `tensorboard --logdir RUN/tensorboard`);
- mlflow: the store MLFLOW_TRACKING_URI names, else a SQLite store RUN/mlflow.db (MLflow 3 refuses
  its old plain-file store unless told otherwise), experiment "budgetlora", run named after RUN;
- wandb: wherever W&B's own settings say (WANDB_PROJECT, default "budgetlora"; WANDB_MODE=offline
  writes under RUN/wandb).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from budgetlora.errors import UserError

log = logging.getLogger(__name__)

def missing_trackers(names: Sequence[str]) -> list[str]:
    """The trackers among `names` whose package is not installed (Accelerate's own checks)."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available, "wandb": is_wandb_available}
    return [n for n in names if not available[n]()]


def flat_settings(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested settings dict as one level of `section.name` keys with values every tracker takes
    (bool, int, float, str): a list becomes its comma-separated text, None becomes 'none'."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key in ("model", "lora", "data", "train", "budget_breakdown"):
            out.update(flat_settings(value, name + "."))
        elif value is None:
            out[name] = "none"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = str(value)
    return out


class RunTrackers:
    """The trackers of one run. Built before training (checks that each one is installed), started
    once the model and its budget are known, fed each log record, finished when the run ends."""

    def __init__(self, names: Optional[Sequence[str]], run_dir: Path):
        self.names = list(dict.fromkeys(names or []))
        self.run_dir = Path(run_dir)
        self._trackers: list[Any] = []
        self._mlflow_uri_set = False  # whether start() pointed MLflow at RUN/mlflow.db
        missing = missing_trackers(self.names)
        if missing:
            packages = " ".join(missing)  # each tracker's PyPI package has its name
            raise UserError(
                f"--report-to {','.join(missing)}: not installed; pip install {packages} "
                f"(or pip install 'budgetlora[report]'), or leave {','.join(missing)} out of --report-to"
            )

    def start(self, config: dict[str, Any], budget_breakdown: dict[str, int],
              resume_step: Optional[int] = None) -> None:
        """Open every tracker and store the settings and budget breakdown as the run's parameters.
        `resume_step`: the checkpoint's step when resuming; TensorBoard then drops what an earlier
        attempt logged after it, as log.jsonl does."""
        values = flat_settings({**config, "budget_breakdown": budget_breakdown})
        for name in self.names:
            try:
                tracker = self._make(name, resume_step)
                tracker.start()
                self._trackers.append(tracker)
                tracker.store_init_configuration(values)
            except Exception as e:  # not reachable, not logged in, unwritable: say which tracker
                self.finish()
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise UserError(f"--report-to {name}: could not start ({reason}); fix that or leave {name} "
                                "out of --report-to") from None

    def _make(self, name: str, resume_step: Optional[int]) -> Any:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        run_name = self.run_dir.resolve().name
        if name == "tensorboard":
            # purge_step: readers discard events at or after it from earlier files of the folder,
            # so a replaced or resumed run shows no steps that log.jsonl no longer has.
            purge = 0 if resume_step is None else resume_step + 1
            return TensorBoardTracker("tensorboard", self.run_dir, purge_step=purge)
        if name == "mlflow":
            import mlflow

            # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI (for subprocesses), so an unset
            # variable means nobody chose a store: this run's own, until finish() unsets it again.
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                mlflow.set_tracking_uri(f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}")
                self._mlflow_uri_set = True
            return MLflowTracker("budgetlora", str((self.run_dir / "mlruns").resolve()), run_name=run_name)
        return WandBTracker(os.environ.get("WANDB_PROJECT", "budgetlora"), name=run_name, dir=str(self.run_dir))

    def log(self, record: dict[str, Any], step: int) -> None:
        """One log.jsonl record; its numbers go to every tracker at `step`."""
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self._trackers:
            tracker.log(values, step=step)

    def finish(self) -> None:
        """Close every started tracker (safe to call twice, and after a failed start)."""
        trackers, self._trackers = self._trackers, []
        for tracker in trackers:
            try:
                tracker.finish()
            except Exception as e:  # closing one tracker must not hide the run's own outcome
                log.warning("could not close the %s tracker: %s", tracker.name, e)
        if self._mlflow_uri_set:
            import mlflow

            # None unsets both the store and the variable: the process is as it was before the run
            # (setting the old default explicitly instead would outlive a later MLFLOW_TRACKING_URI)
            mlflow.set_tracking_uri(None)
            self._mlflow_uri_set = False
