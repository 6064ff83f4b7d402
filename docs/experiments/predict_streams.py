# The inference loop of `budgetlora predict` (`budgetlora.inference.runner.predict_logits`) with one stream of
# batches on torch's threads and with its default on a CPU (`inference_streams`: two Python threads
# taking alternate batches, each on half of torch's threads). Interleaved rounds, texts/s, medians;
# the logits of the two are compared. Behind the "two inference threads" row of docs/BENCHMARKS.md:
#     python docs/experiments/predict_streams.py RUN_DIR INPUT_CSV [ROUNDS]
import statistics
import sys
import time

import budgetlora.inference.runner
from budgetlora.cli import keep_freed_memory
from budgetlora.data import encode, load_file
from budgetlora.inference.runner import LoadedRun, predict_logits

keep_freed_memory()  # as the `budgetlora` command does
run = LoadedRun(sys.argv[1])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
ids = encode(load_file(sys.argv[2], run.cfg.data).texts, run.tokenizer, run.max_length).input_ids
default = budgetlora.inference.runner.inference_streams
variants = {"one stream": lambda device: 1, "default": default}


def loop():
    start = time.perf_counter()
    logits = predict_logits(run.model, ids, run.eval_batch_size, run.collate, run.device, run.precision)
    return len(ids) / (time.perf_counter() - start), logits


loop()  # warm-up
rates = {name: [] for name in variants}
logits = {}
for r in range(rounds):
    for name, streams in variants.items():
        budgetlora.inference.runner.inference_streams = streams
        rate, logits[name] = loop()
        rates[name].append(rate)
        print(f"round {r + 1}: {name:10s} ({streams(run.device)} stream(s)) {rate:.1f} texts/s", flush=True)
for name, xs in rates.items():
    print(f"{name:10s} median {statistics.median(xs):.1f} texts/s  rounds {[round(x, 1) for x in xs]}")
print(f"default vs one stream, round by round: {[round(b / a, 3) for a, b in zip(rates['one stream'], rates['default'])]}")
print(f"largest logit difference {(logits['default'] - logits['one stream']).abs().max().item():.3g}")
