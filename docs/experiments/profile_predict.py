# Where the whole `budgetlora predict` command spends its time, and what the inference loop runs.
# The profile behind "What limits prediction" in docs/BENCHMARKS.md, run on 2026-11-22 (2-core AMD
# EPYC, torch 2.13.0; through `main()` until commit c15ab9e, through the console entry point since):
#     python docs/experiments/profile_predict.py RUN_DIR INPUT_CSV
# RUN_DIR/INPUT_CSV: e.g. DIR/budgetlora-run and DIR/data/validation.csv of a
# `budgetlora bench --output-dir DIR`.
# 1. The command under cProfile: wall seconds in the start-up (imports, model load and merge),
#    tokenization and the inference loop.
# 2. torch.profiler over the inference loop on 2,000 of the texts: the operators' shares.
import cProfile
import os
import pstats
import sys
import tempfile
import time

run_dir, input_csv = sys.argv[1], sys.argv[2]
out_csv = os.path.join(tempfile.mkdtemp(), "predictions.csv")
profiler = cProfile.Profile()
start = time.perf_counter()
profiler.enable()
from budgetlora.cli import entry  # noqa: E402  (imports are part of what is measured)

entry(["predict", "--run", run_dir, "--input", input_csv, "--output", out_csv])  # as the `budgetlora` command runs it
profiler.disable()
wall = time.perf_counter() - start
stats = pstats.Stats(profiler)
by_name = {}
for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items():
    if "budgetlora" in path:
        by_name[name] = max(by_name.get(name, 0.0), cumulative)
print(f"whole command (in this process, interpreter start-up excluded): {wall:.2f} s")
for label, name in (("start-up: imports, model build, adapter load, merge", "__init__"),
                    ("tokenization", "encode"), ("inference loop", "predict_logits")):
    print(f"  {label:55s} {by_name.get(name, 0.0):6.2f} s")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from budgetlora.data import encode, load_file  # noqa: E402
from budgetlora.inference.runner import predict_logits  # noqa: E402
from budgetlora.inference.runner import LoadedRun

run = LoadedRun(run_dir)
ids = encode(load_file(input_csv, run.cfg.data).texts, run.tokenizer, run.max_length).input_ids[:2000]
predict_logits(run.model, ids[:300], run.eval_batch_size, run.collate, run.device, run.precision)  # warm-up
with profile(activities=[ProfilerActivity.CPU]) as prof:
    predict_logits(run.model, ids, run.eval_batch_size, run.collate, run.device, run.precision)
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
    print(f"  {e.key:40s} {100 * e.self_cpu_time_total / total:5.1f}% of self CPU time")
print(f"attention kernel {run.model.config._attn_implementation}, {run.precision}, batch {run.eval_batch_size}, threads {torch.get_num_threads()}")
