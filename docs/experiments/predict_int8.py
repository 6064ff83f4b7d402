# MiniLM inference: accuracy and texts/s of fp32, bf16 and int8 dynamic quantization variants.
# The ad-hoc measurement behind a row of docs/BENCHMARKS.md ("What limits the ratios"), kept as it was run
# on 2026-11-22 (2-core AMD EPYC, torch 2.13.0): python docs/experiments/predict_int8.py
# Needs: bash ../shared/models/get_pretrained.sh minilm and the README's MiniLM run in /tmp/acc/minilm-4k (budgetlora train ... --output-dir /tmp/acc/minilm-4k).
import time, torch, copy, warnings
warnings.filterwarnings("ignore")
from torch.ao.quantization import quantize_dynamic, per_channel_dynamic_qconfig, default_dynamic_qconfig
from budgetlora.inference.runner import LoadedRun, predict_logits
from budgetlora.data import load_file, encode
from budgetlora.config import DataConfig
ts=load_file('../shared/data/ag_news/train_text_only.csv',DataConfig())
texts=ts.texts[:4000]; y=torch.tensor(ts.labels[:4000])
run=LoadedRun('/tmp/acc/minilm-4k')
enc=encode(texts,run.tokenizer,128)
fp=run.model.float()
def ev(m, prec):
    t=time.perf_counter(); lg=predict_logits(m, enc.input_ids, 64, run.collate, run.device, prec); s=time.perf_counter()-t
    return round((lg.argmax(-1)==y).float().mean().item()*100,2), round(len(texts)/s,1)
print('bf16', ev(copy.deepcopy(fp).to(torch.bfloat16),'fp32'))
print('fp32', ev(fp,'fp32'))
names={n for n,m in fp.named_modules() if isinstance(m,torch.nn.Linear) and 'classifier' not in n}
print('int8 per-tensor', ev(quantize_dynamic(copy.deepcopy(fp),{n: default_dynamic_qconfig for n in names}),'fp32'))
print('int8 per-channel', ev(quantize_dynamic(copy.deepcopy(fp),{n: per_channel_dynamic_qconfig for n in names}),'fp32'))
ffn={n for n in names if n.endswith('intermediate.dense') or (n.endswith('output.dense') and 'attention' not in n)}
print('int8 ffn per-channel', ev(quantize_dynamic(copy.deepcopy(fp),{n: per_channel_dynamic_qconfig for n in ffn}),'fp32'))
att={n for n in names if 'attention' in n}
print('int8 attn-only per-channel', ev(quantize_dynamic(copy.deepcopy(fp),{n: per_channel_dynamic_qconfig for n in att}),'fp32'))
