"""A trained run's model on disk: the adapter folder it writes and the model rebuilt from it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from budgetlora.config import ModelConfig, RunConfig
from budgetlora.core.files import atomic_path, remove_stale_temporaries
from budgetlora.core.hub import load_tokenizer
from budgetlora.errors import ModelLoadError
from budgetlora.modeling.build import build_classifier, check_tokenizer_matches

BUDGETLORA_META = "budgetlora.json"  # written into adapter/ so a run can be rebuilt from its folder


def save_adapter(model, tokenizer, run: RunConfig, label_names: list[str], out_dir: Path) -> None:
    """adapter/: peft weights (LoRA + head), tokenizer and what is needed to rebuild the base.

    Written into a temporary folder that then replaces `out_dir`, so a run killed while saving
    never leaves half an adapter (a resumed run replays the evaluation and writes it again).
    """
    remove_stale_temporaries(out_dir)  # left by a run killed while saving
    meta = {
        "base_model": run.model.model,
        "head": run.model.head,
        "pooling": run.model.pooling,
        "num_labels": len(label_names),
        "label_names": list(label_names),
        "max_length": run.data.max_length,
    }
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / BUDGETLORA_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def read_adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / BUDGETLORA_META
    if not path.is_file():
        raise ModelLoadError(f"{adapter_dir}: not a budgetlora adapter folder ({BUDGETLORA_META} is missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_trained(
    run_dir: Path, model: Optional[str] = None, settings: Optional[ModelConfig] = None, merge: bool = True
):
    """(model in eval mode, tokenizer, adapter meta) from a finished run folder.

    Head and pooling come from the adapter. `model` overrides where the base model is loaded from
    (the run may have been trained where the base lived in another folder); `settings` carries the
    run's loading options (attention kernel, remote code, pickle weights).
    """
    import peft

    adapter_dir = Path(run_dir) / "adapter"
    if not adapter_dir.is_dir():
        raise ModelLoadError(f"{run_dir}: no adapter/ folder; is this a finished budgetlora run?")
    meta = read_adapter_meta(adapter_dir)
    mcfg = dataclasses.replace(
        settings or ModelConfig(), model=model or meta["base_model"], head=meta["head"],
        pooling=meta.get("pooling", "first"),
    )
    base = build_classifier(mcfg, meta["num_labels"], meta["label_names"])
    trained = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    if merge:
        # Merged weights: inference runs at the plain encoder's speed, no LoRA side branches.
        trained = trained.merge_and_unload()
    trained.eval()
    tokenizer = load_tokenizer(str(adapter_dir))
    check_tokenizer_matches(tokenizer, base.config, str(adapter_dir))
    return trained, tokenizer, meta
