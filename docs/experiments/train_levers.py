# MiniLM training step, samples/s: bf16 autocast, frozen weights in bf16, LoRA dropout 0, fp32, torch.compile.
# The ad-hoc measurement behind a row of docs/BENCHMARKS.md ("What limits the ratios"), kept as it was run
# on 2026-11-22 (2-core AMD EPYC, torch 2.13.0): python docs/experiments/train_levers.py
# Needs: bash ../shared/models/get_pretrained.sh minilm.
# Pinned to the defaults of the time (SDPA attention, the pretrained encoder dropout 0.1) so it still measures what it measured.
import os
import time, torch, sys, copy
from budgetlora.config import load_config
from budgetlora.core.hub import load_tokenizer
from budgetlora.modeling import build_model
from budgetlora.data import load_file, encode, Collator, sorted_batches
M=os.path.expanduser('~/.cache/pretrained-encoders/all-MiniLM-L6-v2')
cfg=load_config(None,{'model':M,'attn_implementation':'sdpa','encoder_dropout':None,'first_token_last_layer':False,'lora_dropout':0.1})  # the default when this was measured
ts=load_file('../shared/data/ag_news/train.csv',cfg.data)
tok=load_tokenizer(M)
enc=encode(ts.texts[12000:12000+32*8],tok,128,labels=ts.labels[12000:12000+32*8])
# length-homogeneous batches like the grouped sampler gives
bs=sorted_batches(enc.lengths,32)
col=Collator(tok.pad_token_id)
def batch(i):
    b=col([{'input_ids':enc.input_ids[j],'labels':enc.labels[j]} for j in bs[i]]); return b
def run(model, ac=True, steps=6):
    opt=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],lr=1e-4)
    model.train(); times=[]
    for i in range(steps+1):
        b=batch(i % len(bs)); y=b.pop('labels')
        t=time.perf_counter()
        with torch.autocast('cpu',dtype=torch.bfloat16,enabled=ac):
            out=model(**b).logits
        loss=torch.nn.functional.cross_entropy(out.float(),y); loss.backward(); opt.step(); opt.zero_grad()
        if i: times.append(time.perf_counter()-t)
    return round(32/(sum(times)/len(times)),1)
torch.manual_seed(0)
m=build_model(cfg,4)
print('bf16 autocast', run(m))
m2=copy.deepcopy(m)
for n,p in m2.named_parameters():
    if not p.requires_grad: p.data=p.data.to(torch.bfloat16)
print('+frozen bf16', run(m2))
cfg0=load_config(None,{'model':M,'attn_implementation':'sdpa','encoder_dropout':None,'first_token_last_layer':False,'lora_dropout':0.0})
torch.manual_seed(0); m3=build_model(cfg0,4)
for n,p in m3.named_parameters():
    if not p.requires_grad: p.data=p.data.to(torch.bfloat16)
print('+frozen bf16 +lora_dropout0', run(m3))
for mod in m3.modules():
    if isinstance(mod, torch.nn.Dropout): mod.p=0.0
m3.base_model.model.config.attention_probs_dropout_prob=0.0
for mod in m3.modules():
    if hasattr(mod,'dropout_prob'): mod.dropout_prob=0.0
    if hasattr(mod,'attention_dropout') and isinstance(getattr(mod,'attention_dropout'),float): mod.attention_dropout=0.0
print('fp32 baseline (dynamic padding)', run(m, ac=False))

cfg0=load_config(None,{'model':M,'attn_implementation':'sdpa','encoder_dropout':None,'first_token_last_layer':False,'lora_dropout':0.0})
torch.manual_seed(0); m4=build_model(cfg0,4)
t=time.time(); mc=torch.compile(m4); print('compile+1st', run(mc, steps=2), time.time()-t)
print('compiled', run(mc, steps=8))
