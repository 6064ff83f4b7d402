"""Time to accuracy: how soon each side holds a model as good as the notebook pipeline's final one.

Whole commands, timed from their start (Python start-up, imports, reading and tokenizing the
rows, loading the model, training, every evaluation):

- the notebook pipeline (the bench's reference worker): from its process's start until its one
  evaluation after the epoch is done, which is when its final accuracy exists;
- `budgetlora train` with its defaults, no recipe and no adapter flag (so the budget-aware
  defaults, budget.defaults), on the same files, one epoch, evaluating every `eval_every` steps
  on the same validation rows: from the command's start until the first evaluation whose accuracy
  reaches the notebook's final accuracy, i.e. until its record appears in the run's log.jsonl,
  which the bench reads every 20 ms while the command runs (the log is written and closed record
  by record).
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from budgetlora.commands.bench.processes import log_tail, run_child
from budgetlora.config import RunConfig, load_config
from budgetlora.errors import UserError

EVALS_PER_EPOCH = 10  # enough evaluations to see the moment, few enough not to dominate the run


def default_eval_every(samples: int) -> int:
    """Steps between evaluations: about EVALS_PER_EPOCH in the one epoch of `samples` rows."""
    steps = max(1, math.ceil(samples / RunConfig().train.batch_size))
    return max(1, math.ceil(steps / EVALS_PER_EPOCH))


def train_command(model: str, train_csv: Path, val_csv: Path, seed: int, eval_every: int, run_dir: Path) -> list[str]:
    """`budgetlora train` as a user types it with the defaults: the rows, one epoch, a seed."""
    return ["train", "--model", str(model), "--train-file", str(train_csv), "--eval-file", str(val_csv),
            "--epochs", "1", "--eval-every", str(eval_every), "--seed", str(seed), "--output-dir", str(run_dir),
            "--overwrite"]


class EvalClock:
    """Reads a run's log.jsonl as it grows and notes when each evaluation record appeared."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.evals: list[tuple[float, dict[str, Any]]] = []  # (wall time seen, record)

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        now = time.time()
        end = chunk.rfind(b"\n") + 1  # whole lines only: a record may be half written
        self.offset += end
        for line in chunk[:end].splitlines():
            record = json.loads(line) if line.strip() else {}
            if "eval_accuracy" in record:
                self.evals.append((now, record))


def run_defaults_command(model: str, train_csv: Path, val_csv: Path, seed: int, eval_every: int,
                         out_dir: Path) -> dict[str, Any]:
    """The whole `budgetlora train` command with its defaults, timed from outside; its evaluations
    with their times from the command's start."""
    run_dir = out_dir / "budgetlora-defaults-run"
    if run_dir.exists():  # an older run's log must not be read as this one's
        shutil.rmtree(run_dir)
    args = train_command(model, train_csv, val_csv, seed, eval_every, run_dir)
    log_path = out_dir / "budgetlora-defaults.log"
    clock = EvalClock(run_dir / "log.jsonl")
    with open(log_path, "w", encoding="utf-8") as log_f:
        start = time.time()
        rc, rss = run_child([sys.executable, "-m", "budgetlora.cli", *args], log_f, watch=clock)
        seconds = time.time() - start
    if rc != 0:
        raise UserError(f"bench: `budgetlora train` with its defaults failed (exit {rc}; log {log_path}): "
                        f"{log_tail(log_path)}")
    if not clock.evals:
        raise UserError(f"bench: `budgetlora train` logged no evaluation ({run_dir / 'log.jsonl'})")
    cfg = load_config(run_dir / "config.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {
        "command": "budgetlora " + shlex.join(args),
        "eval_every": eval_every,
        "evaluations": [{"step": r["step"], "seconds": seen - start, "eval_accuracy": r["eval_accuracy"]}
                        for seen, r in clock.evals],
        "final_eval_accuracy": clock.evals[-1][1]["eval_accuracy"],
        "whole_command_s": seconds,
        "peak_rss_mb": rss,
        "trainable_params": metrics["trainable_params"],
        "train_samples_per_second": metrics["train_samples_per_second"],
        "chosen": {"method": cfg.adapter.method, "head": cfg.model.head, "target_modules": cfg.lora.target_modules,
                   "layers": cfg.lora.layers,
                   "r": cfg.lora.r, "lora_alpha": cfg.lora.lora_alpha, "lr": cfg.train.lr,
                   "lora_dropout": cfg.lora.lora_dropout},
        "run_dir": str(run_dir),
    }


def time_to_accuracy(reference: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Both sides' seconds to the notebook's final accuracy, their ratio and both final accuracies."""
    target = reference["eval_accuracy"]
    ref_s = reference["eval_done_wall_time"] - reference["process_started_wall_time"]
    first = next((e for e in ours["evaluations"] if e["eval_accuracy"] >= target), None)
    ours_s: Optional[float] = first["seconds"] if first else None
    return {
        "target_accuracy": target,
        "reference_seconds": ref_s,
        "budgetlora_seconds": ours_s,
        "budgetlora_step": first["step"] if first else None,
        "ratio": ref_s / ours_s if ours_s else None,
        "reference_final_accuracy": target,
        "budgetlora_final_accuracy": ours["final_eval_accuracy"],
        "final_accuracy_difference": ours["final_eval_accuracy"] - target,
    }
