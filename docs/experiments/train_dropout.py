# MiniLM training step, samples/s: default dropout vs attention dropout 0 vs all dropout 0.
# The ad-hoc measurement behind a row of docs/BENCHMARKS.md ("What limits the ratios"), kept as it was run
# on 2026-11-22 (2-core AMD EPYC, torch 2.13.0): python docs/experiments/train_dropout.py
# Needs: bash ../shared/models/get_pretrained.sh minilm.
# Pinned to the defaults of the time (SDPA attention, the pretrained encoder dropout 0.1) so it still measures what it measured.
import os
import time, torch, sys, warnings
warnings.filterwarnings("ignore")
from budgetlora.config import load_config
from budgetlora.core.hub import load_hf_config, load_tokenizer
from budgetlora.modeling import build_classifier, add_lora
from budgetlora.data import load_file, encode, Collator, sorted_batches
M=os.path.expanduser('~/.cache/pretrained-encoders/all-MiniLM-L6-v2')
cfg=load_config(None,{'model':M,'attn_implementation':'sdpa','encoder_dropout':None,'first_token_last_layer':False})
ts=load_file('../shared/data/ag_news/train.csv',cfg.data)
tok=load_tokenizer(M)
enc=encode(ts.texts[12000:12000+32*8],tok,128,labels=ts.labels[12000:12000+32*8])
bs=sorted_batches(enc.lengths,32); col=Collator(tok.pad_token_id)
def batch(i): return col([{'input_ids':enc.input_ids[j],'labels':enc.labels[j]} for j in bs[i]])
def run(model, steps=8):
    opt=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],lr=1e-4)
    model.train(); times=[]
    for i in range(steps+1):
        b=batch(i % len(bs)); y=b.pop('labels')
        t=time.perf_counter()
        with torch.autocast('cpu',dtype=torch.bfloat16):
            out=model(**b).logits
        loss=torch.nn.functional.cross_entropy(out.float(),y); loss.backward(); opt.step(); opt.zero_grad()
        if i: times.append(time.perf_counter()-t)
    return round(32/(sum(times)/len(times)),1)
def build(**over):
    hf=load_hf_config(cfg.model,4)
    for k,v in over.items(): setattr(hf,k,v)
    torch.manual_seed(0); return add_lora(build_classifier(cfg.model,4,hf_config=hf),cfg)
print('default', run(build()), run(build()))
print('attn dropout 0', run(build(attention_probs_dropout_prob=0.0)), run(build(attention_probs_dropout_prob=0.0)))
print('all dropout 0', run(build(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)))
