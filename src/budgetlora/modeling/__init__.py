"""The classifier: encoder families (`architectures`, `inventory`), building it with LoRA
(`build`), its fast paths (`fast_paths`) and a trained run's model on disk (`run_model`).

The public names are re-exported here and imported on first use, so that `budget` can read the
family records from a config without importing torch's model code or peft (`plan` stays fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from budgetlora.modeling.architectures import FAMILIES, Family, family_of, module_inventory
    from budgetlora.modeling.build import (
        EncoderClassifier, add_lora, build_classifier, build_classifier_from_config, build_model, build_on_meta,
        check_tokenizer_matches, head_module_names, is_quantized, quantization_kwargs, set_encoder_dropout,
    )
    from budgetlora.modeling.fast_paths import (
        FIRST_QUERY_ATTENTION, PackedLinear, first_query_layers, first_token_last_layer, first_token_only_params,
        pack_linear_layers, packed_linear_available, resolve_attn_implementation,
    )
    from budgetlora.modeling.inventory import Inventory, Module
    from budgetlora.modeling.methods import (
        METHOD_INFO, MethodInfo, TrainingHooks, attach_method, can_merge, describe_adapter, peft_lora_config,
        peft_method_config, refuse_merge, training_hooks,
    )
    from budgetlora.modeling.run_model import (
        BUDGETLORA_META, TRAINED_PARAMETERS, load_trained, read_adapter_meta, save_adapter,
    )

_HOME = {
    "architectures": ["FAMILIES", "Family", "family_of", "module_inventory"],
    "build": ["EncoderClassifier", "add_lora", "build_classifier", "build_classifier_from_config", "build_model",
              "build_on_meta", "check_tokenizer_matches", "head_module_names", "is_quantized",
              "quantization_kwargs", "set_encoder_dropout"],
    "fast_paths": ["FIRST_QUERY_ATTENTION", "PackedLinear", "first_query_layers", "first_token_last_layer",
                   "first_token_only_params", "pack_linear_layers", "packed_linear_available",
                   "resolve_attn_implementation"],
    "inventory": ["Inventory", "Module"],
    "methods": ["METHOD_INFO", "MethodInfo", "TrainingHooks", "attach_method", "can_merge", "describe_adapter",
                "peft_lora_config", "peft_method_config", "refuse_merge", "training_hooks"],
    "run_model": ["BUDGETLORA_META", "TRAINED_PARAMETERS", "load_trained", "read_adapter_meta", "save_adapter"],
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
