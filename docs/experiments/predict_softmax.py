# Softmax in bf16 (transformers' eager attention) against softmax in fp32 and cast back
# (`eager_fp32_softmax`, fp32_softmax_attention.py; the CPU default in commit 78af80d, reverted):
# 1. the softmax kernel alone on MiniLM-shaped attention scores [64, 12, 53, 53] (ms per call);
# 2. the prediction loop of a finished run with each kernel (texts/s), paired rounds, same logits check.
# Behind the fp32-softmax row of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/predict_softmax.py RUN_DIR VALIDATION_CSV [ROUNDS]
import statistics
import sys
import time

import torch

from budgetlora.data import encode, load_file
from budgetlora.inference.runner import LoadedRun, predict_logits
from fp32_softmax_attention import NAME  # registers the attention with transformers


def ms_per_call(fn, n=100):
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


scores = torch.randn(64, 12, 53, 53).bfloat16()
print(f"softmax of bf16 scores, bf16 out:          {ms_per_call(lambda: torch.softmax(scores, -1)):.2f} ms")
print(f"softmax of bf16 scores, fp32 out, cast back: "
      f"{ms_per_call(lambda: torch.softmax(scores, -1, dtype=torch.float32).to(torch.bfloat16)):.2f} ms")

run = LoadedRun(sys.argv[1])
ids = encode(load_file(sys.argv[2], run.cfg.data).texts, run.tokenizer, run.max_length).input_ids
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
kernels = ["eager", NAME]
first = {}
for k in kernels:
    run.model.set_attn_implementation(k)
    first[k] = predict_logits(run.model, ids[:512], 64, run.collate, run.device, run.precision)
print(f"max |logit difference| on 512 rows: {(first[kernels[0]] - first[kernels[1]]).abs().max().item():.5f}")
rates = {k: [] for k in kernels}
for _ in range(rounds):
    for k in kernels:
        run.model.set_attn_implementation(k)
        start = time.perf_counter()
        predict_logits(run.model, ids, run.eval_batch_size, run.collate, run.device, run.precision)
        rates[k].append(len(ids) / (time.perf_counter() - start))
for k, xs in rates.items():
    print(f"{k:20s} median {statistics.median(xs):.0f} texts/s  rounds {[round(x) for x in xs]}")
