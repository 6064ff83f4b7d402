"""Memory and speed of all-MiniLM-L6-v2's classifier built in full precision and with
--quantize-base 4bit / 8bit (docs/METHODS.md, QLoRA). Needs bitsandbytes.

    python docs/experiments/qlora_minilm.py "$(bash ../shared/models/get_pretrained.sh minilm)"
"""

import sys
import time
import warnings

import torch

from budgetlora.config import ModelConfig
from budgetlora.modeling import build_classifier

warnings.simplefilter("ignore")
torch.set_num_threads(1)
model_dir = sys.argv[1]
x = torch.randint(1000, 2000, (8, 64))
for bits in (None, "4bit", "8bit"):
    model = build_classifier(ModelConfig(model=model_dir, head="linear", quantize_base=bits), 4).eval()
    seconds = []
    with torch.no_grad():
        for _ in range(2):  # the first 4-bit call repacks the weights for the CPU kernel
            start = time.perf_counter()
            model(input_ids=x, attention_mask=torch.ones_like(x))
            seconds.append(time.perf_counter() - start)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    print(f"{bits or 'fp32'}: {size / 1e6:.1f} MB of parameters and buffers; one 8 x 64 batch "
          f"{seconds[0]:.2f} s, then {seconds[1]:.2f} s")
