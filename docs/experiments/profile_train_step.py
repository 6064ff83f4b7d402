# Where a budgetlora training step spends its CPU time (all-MiniLM-L6-v2, default settings, bf16
# autocast, batch 32 of real AG News rows): the profile behind docs/BENCHMARKS.md ("What limits").
# python docs/experiments/profile_train_step.py [before|now]   (needs: bash ../shared/models/get_pretrained.sh minilm)
# before (the default): the defaults when the first profile was taken (SDPA attention, the pretrained
# encoder dropout 0.1, plain last layer); now: today's defaults (eager attention on CPU, no dropout in
# the frozen encoder, first-token last layer).
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from budgetlora.config import load_config
from budgetlora.data import Collator, encode, load_file, sorted_batches
from budgetlora.core.hub import load_tokenizer
from budgetlora.modeling import build_model

M = os.path.expanduser("~/.cache/pretrained-encoders/all-MiniLM-L6-v2")
SETTINGS = {"before": {"attn_implementation": "sdpa", "encoder_dropout": None, "first_token_last_layer": False},
            "now": {}}
cfg = load_config(None, {"model": M, **SETTINGS[sys.argv[1] if len(sys.argv) > 1 else "before"]})
rows = load_file("../shared/data/ag_news/train.csv", cfg.data)
tok = load_tokenizer(M)
enc = encode(rows.texts[12000:12256], tok, 128, labels=rows.labels[12000:12256])
batches = sorted_batches(enc.lengths, 32)
collate = Collator(tok.pad_token_id)
torch.manual_seed(0)
model = build_model(cfg, 4).train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)


def step(i):
    b = collate([{"input_ids": enc.input_ids[j], "labels": enc.labels[j]} for j in batches[i % len(batches)]])
    y = b.pop("labels")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**b).logits
    torch.nn.functional.cross_entropy(logits.float(), y).backward()
    opt.step()
    opt.zero_grad()


step(0)  # warm-up
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for i in range(1, 9):
        step(i)
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
groups = {
    "casts (aten::copy_/to/_to_copy)": ("aten::copy_", "aten::_to_copy", "aten::to"),
    "attention (sdpa/eager: bmm, softmax, mask)": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::bmm", "aten::softmax", "aten::_softmax", "aten::where", "aten::isneginf"),
    "dropout": ("aten::dropout", "aten::native_dropout", "aten::bernoulli"),
    "matmul (mm/addmm/linear)": ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul"),
    "layer norm": ("aten::native_layer_norm",),
    "optimizer": ("aten::_fused_adamw_",),
}
for name, ops in groups.items():
    t = sum(e.self_cpu_time_total for e in events if e.key.startswith(ops))
    print(f"{name:40s} {100 * t / total:5.1f}% of self CPU time")
print(events.table(sort_by="self_cpu_time_total", row_limit=15))
