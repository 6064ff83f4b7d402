"""The equal-budget table of docs/METHODS.md: every --method on all-MiniLM-L6-v2 at three budgets.

For each budget and method, the configuration is the first linear-head candidate that
`budgetlora plan --budget B --method M --json` lists (the largest size that fits); rsLoRA is
LoRA's candidate with --use-rslora. The reference line is `--method full` (every parameter trains) at each of
--full-lrs. Every run: the same 8,000 training rows and 2,000 validation
rows (the seeded stratified split of ../shared/data/ag_news/train.csv), 1 epoch, seed 42, the
head at lr 1e-3, and the method at the learning rate that won its short sweep
(docs/experiments/methods_minilm.sh: 2,000 rows, 1,000 validation rows, 150,000 budget, three
rates each). A configuration that a smaller budget already ran (a method at its size cap, or
with a fixed count) is not run again: its row repeats that run.

    python docs/experiments/methods_table_minilm.py [--budgets 150000,1000000,20000] \
        [--full-lrs 5e-5,1e-4,2e-4] [--out runs/table] [--write-measured FILE]

Prints one line per run as it finishes and leaves the runs for `budgetlora compare`. With
--write-measured, also writes each method's accuracy per budget as the planner reads it
(src/budgetlora/budget/measured_methods.json; budget.measured).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from budgetlora.budget.measured import Measurements, to_json

# The sweep's winners (docs/METHODS.md, "How the learning rates were chosen").
SWEPT_LR = {"lora": 3e-3, "rslora": 3e-3, "dora": 3e-3, "adalora": 1e-2, "loha": 1e-2, "lokr": 3e-3,
            "vera": 3e-2, "fourierft": 1e-1, "ia3": 3e-2, "layernorm": 1e-2, "bias": 3e-3, "prompt": 3e-2}
# Extra rates where the swept one proved wrong for the size: LoRA and DoRA at 1M (r=24, r=23) fell
# below their own 150,000 runs at the swept 3e-3, so they also run at the defaults' 2e-3 and at
# 1e-3. The measured accuracy a method gets (--write-measured) is its best over the rates it ran at.
EXTRA_LR = {("lora", 1000000): ("2e-3", "1e-3"), ("dora", 1000000): ("2e-3", "1e-3")}
COMMON = ["--train-file", "../shared/data/ag_news/train.csv", "--max-train-samples", "8000",
          "--max-eval-samples", "2000", "--epochs", "1", "--seed", "42", "--head-lr", "1e-3"]


def plan_args(model: str, budget: int, method: str) -> list[str]:
    """The train flags of the plan's first linear-head candidate for this method and budget."""
    plan_method = "lora" if method == "rslora" else method
    out = subprocess.run(["budgetlora", "plan", "--model", model, "--budget", str(budget), "--json",
                          "--method", plan_method], check=True, capture_output=True, text=True).stdout
    linear = [c for c in json.loads(out) if c["head"] == "linear"]
    if not linear:
        return []
    args = list(linear[0]["train_args"])
    return args + ["--use-rslora"] if method == "rslora" else args


def without_budget(args: list[str]) -> tuple[str, ...]:
    i = args.index("--budget") if "--budget" in args else -1
    return tuple(args[:i] + args[i + 2:]) if i >= 0 else tuple(args)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--budgets", default="150000,1000000,20000")
    p.add_argument("--methods", default=",".join(SWEPT_LR))
    p.add_argument("--full-lrs", default="5e-5,1e-4,2e-4", help="full fine-tuning's rates ('' for none)")
    p.add_argument("--out", default="runs/table")
    p.add_argument("--write-measured", default=None, help="write the accuracies for budget.measured here")
    a = p.parse_args()
    model = a.model or subprocess.run(["bash", "../shared/models/get_pretrained.sh", "minilm"],
                                      check=True, capture_output=True, text=True).stdout.strip()
    done: dict[tuple[str, ...], Path] = {}
    accuracy: dict[int, dict[str, float]] = {}
    for budget in [int(b) for b in a.budgets.split(",") if b]:
        for method in a.methods.split(","):
            args = plan_args(model, budget, method)
            if not args:
                print(f"{budget}\t{method}\tnothing fits", flush=True)
                continue
            key = without_budget(args)
            if key in done:
                print(f"{budget}\t{method}\tsame as {done[key]}", flush=True)
                found = finished(done[key])
            else:
                done[key] = run_dir = Path(a.out) / f"{method}-{budget}"
                found = train_once(run_dir, [*args, "--lr", str(SWEPT_LR[method])], f"{budget}\t{method}")
            for lr in EXTRA_LR.get((method, budget), ()):
                extra = train_once(Path(a.out) / f"{method}-{budget}-lr{lr}", [*args, "--lr", lr],
                                   f"{budget}\t{method}\tlr {lr}")
                found = max([x for x in (found, extra) if x is not None], default=None)
            if found is not None:
                accuracy.setdefault(budget, {})[method] = found
    for lr in [x for x in a.full_lrs.split(",") if x]:
        args = ["--model", model, "--method", "full", "--head", "linear", "--budget", "100000000", "--lr", lr]
        train_once(Path(a.out) / f"full-lr{lr}", args, f"full\tlr {lr}")
    if a.write_measured:
        setup = ("all-MiniLM-L6-v2, linear head, 8,000 training rows, 1 epoch, 2,000 validation rows, seed 42, "
                 "each method at the rate of its short sweep (LoRA and DoRA at 1M: the best of three rates)")
        Path(a.write_measured).write_text(to_json(Measurements(model="all-MiniLM-L6-v2", setup=setup,
                                                               accuracy=accuracy)))


def finished(run_dir: Path) -> "float | None":
    """A finished run's best validation accuracy (None if it did not finish)."""
    path = run_dir / "metrics.json"
    return json.loads(path.read_text())["best_eval_accuracy"] if path.is_file() else None


def train_once(run_dir: Path, args: list[str], label: str) -> "float | None":
    """Train unless the run folder already holds a finished run; print its line either way and
    return its best validation accuracy (None when it failed)."""
    if not (run_dir / "metrics.json").is_file():
        cmd = ["budgetlora", "train", *args, *COMMON, "--output-dir", str(run_dir), "--overwrite"]
        print("$ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"{label}\tFAILED", flush=True)
            return None
    m = json.loads((run_dir / "metrics.json").read_text())
    print(f"{label}\t{m['trainable_params']}\t{m['best_eval_accuracy']:.4f}\t{m['train_runtime_s']:.0f}s\t{run_dir}",
          flush=True)
    return m["best_eval_accuracy"]


if __name__ == "__main__":
    sys.exit(main())
