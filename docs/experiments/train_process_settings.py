# budgetlora's training loop (train(), all defaults, one epoch) in a fresh process, as
# `budgetlora bench`'s worker runs it (a plain Python process) and with the settings the `budgetlora`
# console command makes for its process (`budgetlora.cli.entry`: the allocator's, and the garbage
# collector's around the imports). Interleaved rounds; per run the loop's samples/s, and the seconds
# of its first 10 steps and of the rest (log.jsonl, written every step here). Run on 2026-11-23
# (2-core AMD EPYC, torch 2.13.0, transformers 5.23.0, peft 0.21.2):
#     python docs/experiments/train_process_settings.py MODEL TRAIN_CSV EVAL_CSV [ROUNDS]
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import sys
model, train_csv, eval_csv, out, mode = sys.argv[1:6]
if mode == "console":
    from budgetlora.cli import console_process_setup
    console_process_setup()
from budgetlora.config import load_config
from budgetlora.training.trainer import train
cfg = load_config(None, {"model": model, "train_file": train_csv, "eval_file": eval_csv, "epochs": 1,
                         "seed": 42, "output_dir": out, "log_every": 1})
train(cfg)
"""


def one(mode: str, model: str, train_csv: str, eval_csv: str) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        subprocess.run([sys.executable, "-c", CHILD, model, train_csv, eval_csv, out, mode], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl")) if '"samples_per_second"' in line]
    seen = lambda r: r["step"] * 32  # noqa: E731  (batch 32, no accumulation: the defaults)
    secs = [seen(r) / r["samples_per_second"] for r in rows]  # cumulative loop seconds after each step
    total = secs[-1]
    return seen(rows[-1]) / total, secs[9], total - secs[9]


model, train_csv, eval_csv = sys.argv[1:4]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
res = {"plain": [], "console": []}
for r in range(rounds):
    for mode in (("plain", "console") if r % 2 == 0 else ("console", "plain")):
        rate, first10, rest = one(mode, model, train_csv, eval_csv)
        res[mode].append((rate, first10, rest))
        print(f"round {r + 1} {mode:8s} {rate:6.1f} samples/s  first 10 steps {first10:.2f} s, the rest {rest:.2f} s", flush=True)
for mode, xs in res.items():
    print(f"{mode:8s} median {statistics.median(x[0] for x in xs):.1f} samples/s, first 10 steps "
          f"{statistics.median(x[1] for x in xs):.2f} s, the rest {statistics.median(x[2] for x in xs):.2f} s")
