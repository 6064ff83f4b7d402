"""The default configuration's training speed against the query/value r=8 one, on the same rows.

    python docs/experiments/train_default_step.py MODEL_DIR [ROWS=320] [ROUNDS=3]

Builds each configuration with budgetlora's own code (bf16 autocast where the CPU has it, eager
attention, no encoder dropout, the first-token last layer: the training defaults) and times AdamW
steps over the same length-grouped batches of ROWS real AG News rows, the configurations
interleaved step by step; prints the median samples/s per configuration over the rounds and the
ratio to query/value r=8. Configurations:

- qv-r8: the seed notebooks' placement as budgetlora trained it before (default head, r=8 alpha=16
  on query,value), LoRA dropout 0;
- planned: what `budgetlora train` now chooses with no adapter flag (the planner's first plain-LoRA
  candidate, budget.defaults);
- planned-drop0.05: the same with LoRA dropout 0.05 (the old MiniLM recipe's);
- planned-nocast: the same as planned with peft's cast of each adapted module's input to the
  adapter's fp32 dtype turned off (autocast runs lora_A in bf16 anyway);
- planned-fast: budgetlora.modeling.fast_lora's forward (no cast under autocast, the up-projection,
  scaling and sum in one addmm), what add_lora gives since it was measured here.

(A variant with the down-projection computed in the frozen weight's GEMM, [W; A] x through a custom
autograd function whose backward computes the gradients of x (one GEMM on [W; A]) and A alone,
measured 0.80x against planned-fast's 0.83x in the same run on 2026-12-03 (on wt-defaults, before
the methods planner; to be re-measured), no faster than peft's forward, and was not kept.)

Every model is first put back on peft's own forward, so `planned` is peft's, whatever add_lora does.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from budgetlora.budget import load_config_only
from budgetlora.budget.defaults import Unset, choose_defaults
from budgetlora.config import load_config
from budgetlora.core.hub import load_tokenizer
from budgetlora.data import Collator, encode, load_file, train_batch_sampler
from budgetlora.modeling import build_model, fast_lora

TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "ag_news" / "train.csv"


def configs(model: str) -> dict[str, object]:
    base = load_config(None, {"model": model})
    planned, _ = choose_defaults(base, load_config_only(model, 4), 4, Unset(adapter=True, lr=True))
    qv = load_config(None, {"model": model, "r": 8, "lora_alpha": 16, "target_modules": "query,value"})
    drop = load_config(None, {**_flat(planned), "lora_dropout": 0.05})
    return {"qv-r8": qv, "planned": planned, "planned-drop0.05": drop, "planned-nocast": planned,
            "planned-fast": planned}


def _flat(cfg) -> dict[str, object]:
    return {"model": cfg.model.model, "head": cfg.model.head, "target_modules": cfg.lora.target_modules,
            "r": cfg.lora.r, "lora_alpha": cfg.lora.lora_alpha}


def batches(model: str, rows: int) -> list[dict[str, torch.Tensor]]:
    cfg = load_config(None, {"model": model})
    texts = load_file(str(TRAIN), cfg.data)
    enc = encode(texts.texts[20000:20000 + rows], load_tokenizer(model), 128, labels=texts.labels[20000:20000 + rows])
    collate = Collator(0)
    sampler = train_batch_sampler(enc.lengths, 32, seed=0, group_by_length=True)
    return [collate([{"input_ids": enc.input_ids[i], "labels": enc.labels[i]} for i in b]) for b in sampler.batches(0)]


def step_seconds(model: torch.nn.Module, opt: torch.optim.Optimizer, b: dict[str, torch.Tensor]) -> float:
    """One AdamW step on one batch, as training runs it (bf16 autocast)."""
    b = dict(b)
    y = b.pop("labels")
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**b).logits
    torch.nn.functional.cross_entropy(logits.float(), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    model = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 320
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    data = batches(model, rows)
    n = sum(len(b["labels"]) for b in data)
    runs = {}
    for name, cfg in configs(model).items():
        torch.manual_seed(0)
        m = build_model(cfg, 4)
        for mod in m.modules():  # peft's own forward, whatever add_lora chose
            if type(mod) in fast_lora._FAST_BASE:
                mod.__class__ = fast_lora._FAST_BASE[type(mod)]
        if name.endswith("-fast"):
            fast_lora.use_fast_lora(m)
        if name.endswith("nocast"):
            for mod in m.modules():
                if hasattr(mod, "lora_A"):
                    mod.cast_input_dtype_enabled = False
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, fused=True)
        m.train()
        for b in data[:2]:  # warm-up: first calls allocate and pick kernels
            step_seconds(m, opt, b)
        runs[name] = (m, opt)
    # Interleaved step by step (the order rotating), so that the shared machine's drift falls on
    # every configuration alike; a round's rate is its rows over its summed step times.
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for k in range(rounds):
        spent = {name: 0.0 for name in runs}
        for i, b in enumerate(data):
            shift = (i + k) % len(names)
            for name in names[shift:] + names[:shift]:
                spent[name] += step_seconds(*runs[name], b)
        for name in runs:
            rates[name].append(n / spent[name])
    ref = statistics.median(rates["qv-r8"])
    print(f"{n} rows, {len(data)} batches, {torch.get_num_threads()} thread(s), {rounds} rounds")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:18s} median {med:6.1f} samples/s  ({med / ref:.2f}x qv-r8)  rounds: "
              + ", ".join(f"{x:.1f}" for x in r))


if __name__ == "__main__":
    main()
