"""README.md model card of a run: what was trained, on what, under which budget, with what result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetlora.config import RunConfig
from budgetlora.core.files import atomic_write_text


def write_model_card(out: Path, cfg: RunConfig, metrics: dict[str, Any]) -> None:
    lora = cfg.lora
    data = cfg.data.train_file or f"{cfg.data.dataset} (Hugging Face Hub)"
    breakdown = metrics["budget_breakdown"]
    rows = "\n".join(f"| {k} | {v:,} |" for k, v in breakdown.items() if k != "total" and v)
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    text = f"""# budgetlora run

- **Base model**: `{cfg.model.model}` with the `{cfg.model.head}` head
- **Adapter**: LoRA r={lora.r}, alpha={lora.lora_alpha:g}, dropout={lora.lora_dropout:g}, targets: {targets}, \
layers: {lora.layers or "all"}, bias: {lora.bias}{", rsLoRA" if lora.use_rslora else ""}{", DoRA" if lora.use_dora else ""}
- **Data**: {data}; {metrics["train_rows"]:,} training rows, {metrics["eval_rows"]:,} validation rows \
({"file " + cfg.data.eval_file if cfg.data.eval_file else f"stratified {cfg.data.val_fraction:g} split of train, seed {cfg.train.seed}"}); \
max_length {cfg.data.max_length}
- **Labels**: {", ".join(metrics["label_names"])}

## Budget

{metrics["trainable_params"]:,} trainable parameters, strictly under the budget of {metrics["budget"]:,} \
({metrics["total_params"]:,} parameters in all).

| kind | parameters |
| --- | --- |
{rows}
| **total** | **{breakdown["total"]:,}** |

## Results

| metric | value |
| --- | --- |
| best validation accuracy | {metrics["best_eval_accuracy"]:.4f} (step {metrics["best_step"]}) |
| final validation accuracy | {metrics["final_eval_accuracy"]:.4f} |
| optimizer steps | {metrics["steps"]} ({metrics["epochs_completed"]} epochs) |
| training throughput | {metrics["train_samples_per_second"]:.1f} samples/s, {metrics["train_tokens_per_second"]:.0f} tokens/s |
| training time | {metrics["train_runtime_s"]:.1f} s ({metrics["precision"]}, {metrics["device"]}) |
| machine | {metrics["machine"]} |

## Reproduce

```
{metrics["command"]}
```

The fully resolved settings are in `config.yaml`; `budgetlora train --config config.yaml --output-dir NEW_DIR`
repeats this run. Load the adapter (head included) with:

```python
from budgetlora.modeling import load_trained
model, tokenizer, meta = load_trained("{out}")
```

or with peft directly on the base model built by `budgetlora.modeling.build_classifier`:
`peft.PeftModel.from_pretrained(base, "{out}/adapter")`.
"""
    atomic_write_text(out / "README.md", text)
