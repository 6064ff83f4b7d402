# A linear layer + GELU on a [3392, 1536] bf16 activation (a batch of 64 rows of 53 tokens through
# MiniLM's feed-forward block), called 200 times, each call freeing what the last allocated, under
# glibc's default malloc settings and under mallopt settings. Milliseconds per call, three rounds.
# Behind the allocator row of docs/BENCHMARKS.md (2026-11-22); MODE is one of
# none, trim, trim,pad, mmap, mmap,trim (budgetlora.cli.keep_freed_memory sets mmap,trim):
#     python docs/experiments/allocator_microbench.py MODE
import ctypes
import sys
import time

import torch

mode = sys.argv[1].split(",")
mallopt = ctypes.CDLL(None).mallopt
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
if "trim" in mode:
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
if "pad" in mode:
    mallopt(M_TOP_PAD, 64 << 20)
if "mmap" in mode:
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
F = torch.nn.functional
x = torch.randn(64 * 53, 384, dtype=torch.bfloat16)
w, b = torch.randn(1536, 384, dtype=torch.bfloat16), torch.randn(1536, dtype=torch.bfloat16)


def ms_per_call(n=200):
    for _ in range(10):
        F.gelu(F.linear(x, w, b))
    start = time.perf_counter()
    for _ in range(n):
        F.gelu(F.linear(x, w, b))
    return (time.perf_counter() - start) / n * 1e3


with torch.inference_mode():
    print(sys.argv[1], " ".join(f"{ms_per_call():.2f}" for _ in range(3)), "ms per linear + GELU")
