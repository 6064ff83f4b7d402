"""The `native` head: the architecture's own classification head, trained the LoRA way.

`AutoModelForSequenceClassification`'s head has a hidden dense layer before its output layer
(roberta: `classifier.dense` 768x768 then `classifier.out_proj`; BERT: the pretrained pooler then
`classifier`). The `default` head trains all of it (593,668 parameters on roberta-base); the
`native` head keeps the hidden dense layer frozen, gives it a LoRA adapter like the encoder's
layers, and trains only the output layer (on roberta-base with r=8: 12,288 + 3,076). After
`merge_and_unload` the model is a plain `...ForSequenceClassification`, so it leaves budgetlora as
a standard transformers model (`budgetlora export --format hf`), which the `linear` head cannot.

A hidden dense layer that the pretrained checkpoint does not hold (every architecture here but
BERT, whose pooler is pretrained) is set to the identity with a zero bias instead of random
values: the adapter saves only LoRA and the output layer, so the frozen part must come out the
same each time the model is built, and the identity starts the head as "output layer on the
activated first token", the `linear` head's starting point.

The name tables live in `modeling/head_specs.py`, which the budget counts read without importing torch.
"""

from __future__ import annotations

from typing import Any

from budgetlora.modeling.head_specs import NATIVE_HEADS, NativeHead, native_head, native_targets
from budgetlora.errors import ConfigError

__all__ = ["NATIVE_HEADS", "NativeHead", "native_head", "native_targets", "init_native_head"]


def init_native_head(model: Any) -> None:
    """Set a hidden dense layer the checkpoint does not hold to the identity (see the module doc).
    Nothing to do on the meta device (shapes only)."""
    import torch

    spec = native_head(getattr(model.config, "model_type", None))
    if not spec.dense_is_new:
        return
    dense = model.get_submodule(spec.dense)
    if dense.weight.is_meta:
        return
    if dense.in_features != dense.out_features:
        raise ConfigError(f"head: 'native' needs a square {spec.dense}, got {dense.in_features}x{dense.out_features}")
    with torch.no_grad():
        torch.nn.init.eye_(dense.weight)
        if dense.bias is not None:
            dense.bias.zero_()
