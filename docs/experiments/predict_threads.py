# Prediction with two Python threads of one torch thread each (half the rows each) against one loop on
# two threads, 5 paired rounds, texts/s, batches of BATCH rows (default 32). Behind the two-threads row
# of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/predict_threads.py RUN_DIR VALIDATION_CSV [BATCH]
import statistics
import sys
import threading
import time

import torch

from budgetlora.data import encode, load_file
from budgetlora.inference.runner import LoadedRun, predict_logits

run = LoadedRun(sys.argv[1])
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
ids = encode(load_file(sys.argv[2], run.cfg.data).texts, run.tokenizer, run.max_length).input_ids[:2400]


def one_loop():
    start = time.perf_counter()
    predict_logits(run.model, ids, batch, run.collate, run.device, run.precision)
    return len(ids) / (time.perf_counter() - start)


def two_loops():
    def work(rows):
        torch.set_num_threads(1)  # per thread: each worker gets one core
        predict_logits(run.model, rows, batch, run.collate, run.device, run.precision)

    threads = [threading.Thread(target=work, args=(ids[k::2],)) for k in (0, 1)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.set_num_threads(2)
    return len(ids) / (time.perf_counter() - start)


one_loop()
single, double = [], []
for _ in range(5):
    single.append(one_loop())
    double.append(two_loops())
print("one loop, 2 threads ", [round(x) for x in single], "median", round(statistics.median(single)))
print("2 loops, 1 thread each", [round(x) for x in double], "median", round(statistics.median(double)))
print("paired ratios", [round(b / a, 3) for a, b in zip(single, double)])
