"""Where each architecture's own classification head keeps its layers, for the `native` head.

Plain name tables and string rules, no torch: the budget counts (`plan`, `train`'s early check)
read them without importing the model code. The head itself is described in
`modeling/native_head.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from budgetlora.errors import ConfigError


@dataclass(frozen=True)
class NativeHead:
    """Where an architecture's own head keeps its two layers."""

    dense: str  # full module name of the hidden dense layer: frozen, LoRA-adapted
    output: str  # the output layer, trained whole (peft's modules_to_save entry)
    dense_is_new: bool  # absent from pretrained checkpoints: built as the identity


_ROBERTA_STYLE = NativeHead("classifier.dense", "classifier.out_proj", dense_is_new=True)  # ...ClassificationHead

NATIVE_HEADS = {
    "bert": NativeHead("bert.pooler.dense", "classifier", dense_is_new=False),
    "roberta": _ROBERTA_STYLE,
    "xlm-roberta": _ROBERTA_STYLE,
    "camembert": _ROBERTA_STYLE,
    "electra": _ROBERTA_STYLE,
    "mpnet": _ROBERTA_STYLE,
    "deberta-v2": NativeHead("pooler.dense", "classifier", dense_is_new=True),  # ContextPooler
}

# Architectures whose head cannot be split this way, and why.
_WHY_NOT = {
    "distilbert": "peft picks the modules it trains whole by name suffix, and distilbert's output layer "
                  "`classifier` is also the end of its hidden layer `pre_classifier`, so the hidden layer "
                  "could not stay frozen",
}


def native_head(model_type: Optional[str]) -> NativeHead:
    """The head layout of `model_type`, or a one-line ConfigError saying what to use instead."""
    spec = NATIVE_HEADS.get(model_type or "")
    if spec is not None:
        return spec
    why = _WHY_NOT.get(model_type or "", "budgetlora does not know where this architecture's head keeps its layers")
    raise ConfigError(
        f"head: 'native' is not available for {model_type or 'this'} models ({why}); use --head default or --head linear"
    )


def native_targets(target_modules: Union[list[str], str], spec: NativeHead) -> Union[list[str], str]:
    """`target_modules` widened to the head's hidden dense layer.

    A full module name in a list matches whatever `layers` says (peft checks exact names before
    the layer filter); 'all-linear' already covers it; a regular expression gets it as an
    alternative (peft full-matches the pattern).
    """
    if isinstance(target_modules, str):
        if target_modules.lower() == "all-linear":
            return target_modules
        return f"(?:{target_modules})|{re.escape(spec.dense)}"
    names = list(target_modules)
    return names if spec.dense in names else names + [spec.dense]
