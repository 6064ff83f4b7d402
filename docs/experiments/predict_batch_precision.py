# MiniLM inference texts/s by batch size: autocast vs a model held in bf16, and fp32.
# The ad-hoc measurement behind a row of docs/BENCHMARKS.md ("What limits the ratios"), kept as it was run
# on 2026-11-22 (2-core AMD EPYC, torch 2.13.0): python docs/experiments/predict_batch_precision.py
# Needs: bash ../shared/models/get_pretrained.sh minilm and the README's MiniLM run in /tmp/acc/minilm-4k (budgetlora train ... --output-dir /tmp/acc/minilm-4k).
import time, torch, copy
from budgetlora.inference.runner import LoadedRun, predict_logits
from budgetlora.data import load_file, encode
from budgetlora.config import DataConfig
run=LoadedRun('/tmp/acc/minilm-4k')
ts=load_file('../shared/data/ag_news/train_text_only.csv',DataConfig())
texts=ts.texts[:2000]
enc=encode(texts,run.tokenizer,128)
def t(model, bs, prec):
    s=time.perf_counter(); lg=predict_logits(model, enc.input_ids, bs, run.collate, run.device, prec); e=time.perf_counter()-s
    return round(len(texts)/e,1), lg
base=run.model
for bs in (32,64,128):
    print('autocast bs',bs, t(base,bs,'bf16')[0])
mb=copy.deepcopy(base).to(torch.bfloat16)
for bs in (32,64,128):
    r,lg=t(mb,bs,'fp32'); print('pure bf16 bs',bs, r)
r0,l0=t(base,64,'fp32'); print('fp32 bs64', r0)
print('agree bf16 vs fp32', (lg.argmax(-1)==l0.argmax(-1)).float().mean().item())
