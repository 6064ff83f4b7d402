# The inference loop of `budgetlora predict` on one run's merged bf16 model with PyTorch's plain
# nn.Linear layers and with `budgetlora.modeling.pack_linear_layers` (oneDNN matmuls on packed weights,
# bias and feed-forward GELU inside the kernel; the `packed_cpu_linear` default). Interleaved rounds,
# texts/s, medians; then both models' logits against the same model in fp32, and their accuracies
# where the file has labels. Behind the "packed linear layers" row of docs/BENCHMARKS.md (2026-11-22):
#     python docs/experiments/predict_packed_linear.py RUN_DIR INPUT_CSV [ROUNDS]
import copy
import statistics
import sys
import time

import torch

import budgetlora.modeling
from budgetlora.cli import keep_freed_memory
from budgetlora.data import encode, load_file
from budgetlora.inference.runner import LoadedRun, predict_logits

keep_freed_memory()  # as the `budgetlora` command does
pack = budgetlora.modeling.pack_linear_layers
budgetlora.modeling.pack_linear_layers = lambda model: 0  # LoadedRun then leaves the plain layers
run = LoadedRun(sys.argv[1])
assert run.precision == "bf16" and run.device.type == "cpu", "this compares bf16 CPU inference"
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
rows = load_file(sys.argv[2], run.cfg.data)
ids = encode(rows.texts, run.tokenizer, run.max_length).input_ids
models = {"plain": run.model, "packed": copy.deepcopy(run.model)}
print(f"packed {pack(models['packed'])} linear layers", flush=True)


def loop(model, precision="bf16"):
    start = time.perf_counter()
    logits = predict_logits(model, ids, run.eval_batch_size, run.collate, run.device, precision)
    return len(ids) / (time.perf_counter() - start), logits


rates = {name: [] for name in models}
logits = {}
loop(models["plain"])  # warm-up
for r in range(rounds):
    for name, model in models.items():
        rate, logits[name] = loop(model)
        rates[name].append(rate)
        print(f"round {r + 1}: {name:6s} {rate:.1f} texts/s", flush=True)
_, fp32 = loop(models["plain"].float(), "fp32")
labels = torch.as_tensor(rows.labels) if rows.labels is not None else None
for name, xs in rates.items():
    line = (f"{name:6s} median {statistics.median(xs):.1f} texts/s  rounds {[round(x, 1) for x in xs]}; "
            f"largest logit difference to fp32 {(logits[name] - fp32).abs().max().item():.3g}, "
            f"labels as fp32's {(logits[name].argmax(-1) == fp32.argmax(-1)).float().mean().item():.4f}")
    if labels is not None:
        line += f", accuracy {(logits[name].argmax(-1) == labels).float().mean().item():.4f}"
    print(line)
if labels is not None:
    print(f"fp32   accuracy {(fp32.argmax(-1) == labels).float().mean().item():.4f}")
print(f"packed vs plain, round by round: {[round(p / q, 3) for p, q in zip(rates['packed'], rates['plain'])]}")
