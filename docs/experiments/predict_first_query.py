# The inference loop of `budgetlora predict` with the last layer's attention for every query (as
# transformers computes it) and for the first query only (`first_token_last_layer`'s attention,
# `budgetlora.modeling.fast_paths._first_query_attention`), on one merged model whose last attention module is
# switched between the two. Interleaved rounds, texts/s, medians; the logits are compared.
# Behind the "first query" row of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/predict_first_query.py RUN_DIR INPUT_CSV [ROUNDS]
import statistics
import sys
import time

from budgetlora.data import encode, load_file
from budgetlora.inference.runner import LoadedRun, predict_logits
from budgetlora.modeling import FIRST_QUERY_ATTENTION

run = LoadedRun(sys.argv[1])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
ids = encode(load_file(sys.argv[2], run.cfg.data).texts, run.tokenizer, run.max_length).input_ids
model = run.model
last = [m for m in model.modules() if getattr(getattr(m, "config", None), "_attn_implementation", None) == FIRST_QUERY_ATTENTION]
assert len(last) == 1, "this run's model has no first-query attention"
configs = {"every query": model.config, "first query": last[0].config}


def loop():
    start = time.perf_counter()
    logits = predict_logits(model, ids, run.eval_batch_size, run.collate, run.device, run.precision)
    return len(ids) / (time.perf_counter() - start), logits


rates = {name: [] for name in configs}
logits = {}
last[0].config = configs["every query"]
loop()  # warm-up
for r in range(rounds):
    for name, config in configs.items():
        last[0].config = config
        rate, logits[name] = loop()
        rates[name].append(rate)
        print(f"round {r + 1}: {name:11s} {rate:.1f} texts/s", flush=True)
diff = (logits["every query"] - logits["first query"]).abs().max().item()
same = bool((logits["every query"].argmax(-1) == logits["first query"].argmax(-1)).all())
print(f"largest logit difference {diff:.3g}, same predicted labels: {same}")
for name, xs in rates.items():
    print(f"{name:11s} median {statistics.median(xs):.1f} texts/s  rounds {[round(x, 1) for x in xs]}")
