# MiniLM training step, samples/s: attention kernel (SDPA / SDPA math / eager) x dropout in the frozen
# encoder x where the weights are held (autocast over fp32 weights, frozen weights in bf16, all bf16),
# the first-token last layer (eager_nodrop vs eager_nodrop_cut), its attention for the first query
# only (eager_nodrop_cut_full_last_query vs eager_nodrop_cut) and the softmax in fp32
# (eager_nodrop_cut vs fp32_softmax_nodrop_cut).
# The measurement behind the attention and dropout rows of docs/BENCHMARKS.md, run on 2026-11-22
# (2-core AMD EPYC, torch 2.13.0, transformers 5.23.0, peft 0.21.2):
#     python docs/experiments/train_attention_dropout.py [variant,variant,...]
# Each variant runs 12 real AG News batches of 32 (from budgetlora's length-grouped sampler, after
# one warm-up batch), 3 rounds interleaved with the other variants; the best round is printed with
# all three, since this shared 2-core machine drifts by 10-15% between rounds.
# Needs: bash ../shared/models/get_pretrained.sh minilm.
import contextlib
import copy
import os
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from budgetlora.config import load_config
from fp32_softmax_attention import NAME as FP32_SOFTMAX  # registers the attention with transformers
from budgetlora.data import Collator, LengthGroupedBatchSampler, encode, load_file
from budgetlora.core.hub import load_tokenizer
from budgetlora.modeling import build_model

M = os.path.expanduser("~/.cache/pretrained-encoders/all-MiniLM-L6-v2")
# encoder_dropout None = the pretrained 0.1 everywhere, as before the change this measured; the
# first-token last layer came later and has its own model ("eager_cut", variant eager_nodrop_cut)
cfg = {kernel: load_config(None, {"model": M, "attn_implementation": kernel, "encoder_dropout": None,
                                  "first_token_last_layer": False})
       for kernel in ("sdpa", "eager")}
cfg["eager_cut"] = load_config(None, {"model": M, "attn_implementation": "eager", "encoder_dropout": None})
cfg["fp32_softmax_cut"] = load_config(None, {"model": M, "attn_implementation": FP32_SOFTMAX, "encoder_dropout": None})
texts = load_file("../shared/data/ag_news/train.csv", cfg["sdpa"].data)
tok = load_tokenizer(M)
enc = encode(texts.texts[12000:13024], tok, 128, labels=texts.labels[12000:13024])
batches = list(LengthGroupedBatchSampler(enc.lengths, 32, shuffle=True, seed=0, drop_last=False, bucket_batches=50))[:12]
collate = Collator(tok.pad_token_id)
B = [collate([{"input_ids": enc.input_ids[j], "labels": enc.labels[j]} for j in b]) for b in batches]


def samples_per_second(model, autocast=True):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    model.train()
    for i, b in enumerate([B[0]] + B):
        if i == 1:
            start = time.perf_counter()
        b = dict(b)
        y = b.pop("labels")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(**b).logits
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()
        opt.zero_grad()
    return 32 * len(B) / (time.perf_counter() - start)


def no_dropout(m):
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
        if hasattr(mod, "dropout_prob"):
            mod.dropout_prob = 0.0
    return m


def attention_dropout_off(m):
    for name, mod in m.named_modules():
        if hasattr(mod, "dropout_prob"):
            mod.dropout_prob = 0.0
        if name.endswith("attention.self.dropout"):
            mod.p = 0.0
    return m


def hidden_dropout_off(m):
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Dropout) and not name.endswith("attention.self.dropout") and "classifier" not in name and not name.endswith("model.dropout"):
            mod.p = 0.0
    return m


def frozen_bf16(m):
    for p in m.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    return m


def same(m):
    return m


def full_last_query(m):
    # undo the first-query attention of the last layer: its module dispatches on the model's kernel again
    from budgetlora.modeling import FIRST_QUERY_ATTENTION

    for mod in m.modules():
        if getattr(getattr(mod, "config", None), "_attn_implementation", None) == FIRST_QUERY_ATTENTION:
            mod.config = m.config
    return m


# name: (config the model is built with, transform, autocast, SDPA backend forced)
VARIANTS = {
    "sdpa": ("sdpa", same, True, None),
    "sdpa_nodrop": ("sdpa", no_dropout, True, None),
    "sdpa_math_nodrop": ("sdpa", no_dropout, True, SDPBackend.MATH),
    "eager": ("eager", same, True, None),
    "eager_attn_dropout_off": ("eager", attention_dropout_off, True, None),
    "eager_hidden_dropout_off": ("eager", hidden_dropout_off, True, None),
    "eager_nodrop": ("eager", no_dropout, True, None),
    "eager_nodrop_frozen_bf16": ("eager", lambda m: no_dropout(frozen_bf16(m)), True, None),
    "eager_nodrop_all_bf16": ("eager", lambda m: no_dropout(m.to(torch.bfloat16)), False, None),
    "eager_nodrop_cut": ("eager_cut", no_dropout, True, None),  # today's CPU default
    "eager_nodrop_cut_full_last_query": ("eager_cut", lambda m: no_dropout(full_last_query(m)), True, None),
    "fp32_softmax_nodrop_cut": ("fp32_softmax_cut", no_dropout, True, None),
}
chosen = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
bases = {}
for kernel in {VARIANTS[k][0] for k in chosen}:
    torch.manual_seed(0)
    bases[kernel] = build_model(cfg[kernel], 4)
models = {k: VARIANTS[k][1](copy.deepcopy(bases[VARIANTS[k][0]])) for k in chosen}
results = {k: [] for k in chosen}
for _ in range(3):
    for k in chosen:
        _, _, autocast, backend = VARIANTS[k]
        with sdpa_kernel([backend]) if backend else contextlib.nullcontext():
            results[k].append(samples_per_second(models[k], autocast))
for k in chosen:
    print(f"{k:28s} best {max(results[k]):6.1f}  rounds {[round(x, 1) for x in results[k]]}")
