# A custom CPU attention (one baddbmm for scale + mask, registered with transformers' AttentionInterface)
# against eager in the whole model's prediction loop, texts/s, 3 rounds. Behind the custom-attention row
# of docs/BENCHMARKS.md (2026-11-22): python docs/experiments/predict_custom_attention.py RUN_DIR VALIDATION_CSV
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

def cpu_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    B, H, T, D = query.shape
    S = key.shape[-2]
    if scaling is None:
        scaling = D ** -0.5
    q = query.reshape(B * H, T, D)
    kt = key.reshape(B * H, S, D).transpose(1, 2)
    if attention_mask is not None:
        bias = attention_mask.expand(B, H, attention_mask.shape[2], S).reshape(B * H, attention_mask.shape[2], S)
        scores = torch.baddbmm(bias, q, kt, alpha=scaling)
    else:
        scores = torch.bmm(q, kt).mul_(scaling) if not torch.is_grad_enabled() else torch.bmm(q, kt) * scaling
    probs = torch.softmax(scores, -1)
    if dropout and module.training:
        probs = nn.functional.dropout(probs, p=dropout, training=True)
    out = torch.bmm(probs, value.reshape(B * H, S, D)).view(B, H, T, D).transpose(1, 2).contiguous()
    return out, None

AttentionInterface.register("cpu_bmm", cpu_attention)
AttentionMaskInterface.register("cpu_bmm", eager_mask)



import sys, time, copy, statistics
from budgetlora.inference.runner import LoadedRun, predict_logits
from budgetlora.data import load_file, encode
run=LoadedRun(sys.argv[1])
ts=load_file(sys.argv[2], run.cfg.data)
ids=encode(ts.texts, run.tokenizer, run.max_length).input_ids[::2]
V={}
for impl in ('eager','cpu_bmm'):
    m=copy.deepcopy(run.model); m.set_attn_implementation(impl); V[impl]=m
a=predict_logits(V['eager'], ids[:200], 32, run.collate, run.device, run.precision)
b=predict_logits(V['cpu_bmm'], ids[:200], 32, run.collate, run.device, run.precision)
print('maxdiff', (a-b).abs().max().item())
def tm(m,bs):
    t=time.perf_counter(); predict_logits(m, ids, bs, run.collate, run.device, run.precision); return len(ids)/(time.perf_counter()-t)
res={}
for rep in range(3):
    for impl in V:
        res.setdefault(impl,[]).append(tm(V[impl],32))
for k,v in res.items(): print(k,[round(x) for x in v],'median',round(statistics.median(v)))
