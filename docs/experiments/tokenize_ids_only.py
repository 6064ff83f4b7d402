# One batched call of the fast tokenizer on 7,600 texts, as `budgetlora.data.encode` made it before
# and after commit e218b33: with the attention masks and token types it returns by default (then
# unused), and with the ids only. Three rounds, seconds; the ids are checked to be the same.
# Behind the "tokenizer" row of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/tokenize_ids_only.py MODEL_DIR INPUT_CSV
import csv
import sys
import time

from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
with open(sys.argv[2], newline="", encoding="utf-8") as f:
    texts = [row[1] for row in csv.reader(f)]


def everything():
    return [list(x) for x in tokenizer(texts, truncation=True, max_length=128, padding=False)["input_ids"]]


def ids_only():
    ids = tokenizer(texts, truncation=True, max_length=128, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return [x if isinstance(x, list) else list(x) for x in ids]


for r in range(3):
    for name, fn in (("masks and token types too", everything), ("ids only", ids_only)):
        start = time.perf_counter()
        fn()
        print(f"round {r + 1}: {name:25s} {time.perf_counter() - start:.3f} s")
print(f"same ids: {everything() == ids_only()} ({len(texts)} texts)")
