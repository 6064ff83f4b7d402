"""The learning-rate rule of the budget-aware defaults: short runs of the planner's first choice
at several learning rates, on two model sizes.

    python docs/experiments/default_lr.py MODEL_DIR ROWS EVAL_ROWS LR[,LR...] OUT_DIR [extra train flags]

Each run is the whole `budgetlora train` command with the planner's adapter settings for MODEL
(read from `budgetlora plan --method lora`'s first candidate, given as explicit flags so that only --lr varies),
ROWS training rows for one epoch and EVAL_ROWS validation rows of ../shared/data/ag_news/train.csv
(the seeded stratified split). Prints one line per learning rate: validation accuracy, loss,
training samples/s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO.parent / "shared" / "data" / "ag_news" / "train.csv"


def planned_flags(model: str) -> list[str]:
    """The flags of the candidate `train`'s defaults take: plan's first among DEFAULT_METHODS."""
    from budgetlora.budget.defaults import DEFAULT_METHODS

    out = subprocess.run([sys.executable, "-m", "budgetlora.cli", "plan", "--model", model, "--json",
                          "--method", ",".join(DEFAULT_METHODS)], check=True, capture_output=True, text=True).stdout
    first = json.loads(out)[0]["train_args"]
    return first[2:]  # drop --model M


def main() -> None:
    model, rows, eval_rows, lrs, out = sys.argv[1:6]
    extra = sys.argv[6:]
    flags = planned_flags(model)
    print("planned:", " ".join(flags), flush=True)
    for lr in lrs.split(","):
        run = Path(out) / f"lr-{lr}"
        cmd = [sys.executable, "-m", "budgetlora.cli", "train", "--model", model, "--train-file", str(TRAIN),
               "--max-train-samples", rows, "--max-eval-samples", eval_rows, "--epochs", "1", *flags,
               "--lr", lr, "--output-dir", str(run), "--overwrite", *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m = json.loads((run / "metrics.json").read_text())
        last = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "eval_loss" in x][-1]
        print(f"lr {lr}: val acc {m['final_eval_accuracy']:.4f} (best {m['best_eval_accuracy']:.4f}), "
              f"val loss {last['eval_loss']:.4f}, {m['train_samples_per_second']:.1f} samples/s, "
              f"{m['trainable_params']:,} trainable", flush=True)


if __name__ == "__main__":
    main()
