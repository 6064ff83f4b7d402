# Prediction, texts/s in-process: eager vs SDPA attention at batch 32 and 64, bf16 merged model.
# The measurement behind the prediction-kernel row of docs/BENCHMARKS.md, run on 2026-11-22
# (2-core AMD EPYC, torch 2.13.0): python docs/experiments/predict_attention.py RUN_DIR VALIDATION_CSV
# RUN_DIR: a finished run (e.g. the budgetlora-run of a `budgetlora bench --output-dir DIR`), and
# DIR/data/validation.csv its validation rows. Every other row is timed (3,800 texts), 3 rounds.
import copy
import statistics
import sys
import time

from budgetlora.data import encode, load_file
from budgetlora.inference.runner import LoadedRun, predict_logits

run = LoadedRun(sys.argv[1])
texts = load_file(sys.argv[2], run.cfg.data).texts
ids = encode(texts, run.tokenizer, run.max_length).input_ids[::2]
models = {}
for kernel in ("eager", "sdpa"):
    models[kernel] = copy.deepcopy(run.model)
    models[kernel].set_attn_implementation(kernel)


def rate(model, batch):
    start = time.perf_counter()
    predict_logits(model, ids, batch, run.collate, run.device, run.precision)
    return len(ids) / (time.perf_counter() - start)


rate(models["eager"], 32)  # warm-up
results = {}
for _ in range(3):
    for kernel, model in models.items():
        for batch in (32, 64):
            results.setdefault((kernel, batch), []).append(rate(model, batch))
for (kernel, batch), rates in results.items():
    print(f"{kernel:6s} batch {batch:3d}: median {statistics.median(rates):5.0f} texts/s  rounds {[round(r) for r in rates]}")
