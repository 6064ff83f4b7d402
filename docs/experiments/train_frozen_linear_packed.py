# One frozen linear layer of the training forward + its input gradient at all-MiniLM-L6-v2's shapes
# (1,700 rows = a batch of 32 rows of ~53 tokens): autocast over an fp32 weight (what training does),
# a plain bf16 linear, and oneDNN's packed matmul (`_linear_pointwise` on a reordered weight, as
# `budgetlora.modeling.PackedLinear` does for prediction) with the input gradient from the dense bf16
# weight, in a custom autograd function. Medians of 30 calls, ms. Behind the "packed frozen linear
# layers in training" row of docs/BENCHMARKS.md (2026-11-23, 2-core AMD EPYC, torch 2.13.0):
#     python docs/experiments/train_frozen_linear_packed.py
import statistics
import time

import torch

torch.manual_seed(0)


class PackedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, packed, w, b):
        ctx.save_for_backward(w)
        return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return g @ w, None, None, None  # the weight is frozen: the input's gradient only


def bench(fn, n=30):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        s = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - s)
    return statistics.median(ts) * 1e3


M = 1700
for i, o in [(384, 384), (384, 1536), (1536, 384)]:
    lin = torch.nn.Linear(i, o).requires_grad_(False)
    wb, bb = lin.weight.to(torch.bfloat16), lin.bias.to(torch.bfloat16)
    packed = torch.ops.mkldnn._reorder_linear_weight(wb, M)
    x = torch.randn(M, i, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(M, o, dtype=torch.bfloat16)

    def autocast_fp32_weight():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = lin(x)
        y.backward(g)

    def bf16_linear():
        torch.nn.functional.linear(x, wb, bb).backward(g)

    def packed_linear():
        PackedFn.apply(x, packed, wb, bb).backward(g)

    ms = [bench(f) for f in (autocast_fp32_weight, bf16_linear, packed_linear)]
    print(f"{i}->{o}: autocast over fp32 weight {ms[0]:.3f} ms, bf16 linear {ms[1]:.3f} ms, packed {ms[2]:.3f} ms "
          f"({4 * M * i * o / ms[2] / 1e6:.0f} GFLOP/s packed)")
