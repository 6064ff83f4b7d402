"""A trained run's model on disk: the adapter folder it writes and the model rebuilt from it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from budgetlora.config import ModelConfig, RunConfig, resolved_method
from budgetlora.core.files import atomic_path, remove_stale_temporaries
from budgetlora.core.hub import load_tokenizer
from budgetlora.errors import ModelLoadError
from budgetlora.modeling.build import build_classifier, check_tokenizer_matches, is_quantized
from budgetlora.modeling.methods import METHOD_INFO, can_merge, refuse_merge

BUDGETLORA_META = "budgetlora.json"  # written into adapter/ so a run can be rebuilt from its folder
# The trained tensors of a method peft has no tuner for (BitFit), by parameter name.
TRAINED_PARAMETERS = "trained_parameters.safetensors"


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
        "method": resolved_method(run),
        "quantize_base": run.model.quantize_base,
    }
    with atomic_path(out_dir, directory=True) as tmp:
        if METHOD_INFO[meta["method"]].peft:
            model.save_pretrained(str(tmp))
        else:  # only what trained: the base weights are the pretrained model's
            from safetensors.torch import save_file

            save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      str(tmp / TRAINED_PARAMETERS))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / BUDGETLORA_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def read_adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / BUDGETLORA_META
    if not path.is_file():
        raise ModelLoadError(f"{adapter_dir}: not a budgetlora adapter folder ({BUDGETLORA_META} is missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_trained(
    run_dir: Path, model: Optional[str] = None, settings: Optional[ModelConfig] = None, merge: bool = True,
    must_merge: bool = False,
):
    """(model in eval mode, tokenizer, adapter meta) from a finished run folder.

    Head and pooling come from the adapter. `model` overrides where the base model is loaded from
    (the run may have been trained where the base lived in another folder); `settings` carries the
    run's loading options (attention kernel, remote code, pickle weights). With `merge` the update
    is folded into the base weights where the method allows it (not prompt tuning, nor a
    quantized base, whose requantized weights would differ from what was trained); elsewhere the
    peft model is returned as it is, which predicts the same. `must_merge` refuses instead, in one
    line, for operations that need plain weights.
    """
    adapter_dir = Path(run_dir) / "adapter"
    if not adapter_dir.is_dir():
        raise ModelLoadError(f"{run_dir}: no adapter/ folder; is this a finished budgetlora run?")
    meta = read_adapter_meta(adapter_dir)
    method = meta.get("method", "lora")  # runs from before --method are LoRA runs
    if method not in METHOD_INFO:
        raise ModelLoadError(f"{adapter_dir}: trained with method {method!r}, which this budgetlora does not know; "
                             "upgrade budgetlora")
    if must_merge:
        refuse_merge(method, "merge")
    mcfg = dataclasses.replace(
        settings or ModelConfig(), model=model or meta["base_model"], head=meta["head"],
        pooling=meta.get("pooling", "first"), quantize_base=meta.get("quantize_base"),
    )
    base = build_classifier(mcfg, meta["num_labels"], meta["label_names"])
    if METHOD_INFO[method].peft:
        import peft

        trained = peft.PeftModel.from_pretrained(base, str(adapter_dir))
        if merge and can_merge(method) and not is_quantized(trained):
            # Merged weights: inference runs at the plain encoder's speed, no adapter side branches.
            trained = merge_adapter(trained)
    else:
        trained = _load_trained_parameters(base, adapter_dir)
    trained.eval()
    tokenizer = load_tokenizer(str(adapter_dir))
    check_tokenizer_matches(tokenizer, base.config, str(adapter_dir))
    return trained, tokenizer, meta


def merge_adapter(model):
    """peft's merge_and_unload, with the head's trained copy put in place first: peft's generic
    unloading (all methods but LoRA's) cannot replace a `modules_to_save` wrapper around a head
    made of several modules (roberta's classifier.dense + out_proj: "has no attribute 'weight'")."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper) and module.active_adapters:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.modules_to_save[module.active_adapter])
    return model.merge_and_unload()


def _load_trained_parameters(base, adapter_dir: Path):
    """The base classifier with the tensors a non-peft method trained put back in place."""
    import torch
    from safetensors.torch import load_file

    path = adapter_dir / TRAINED_PARAMETERS
    if not path.is_file():
        raise ModelLoadError(f"{adapter_dir}: {TRAINED_PARAMETERS} is missing; the adapter folder is incomplete")
    tensors = load_file(str(path))
    own = dict(base.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ModelLoadError(f"{adapter_dir}: {len(unknown)} trained tensors (e.g. {unknown[0]}) do not exist in the "
                             "base model; was the run trained on another model?")
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value)
    return base
