"""The count of a run's trainable parameters from the model config alone: analytic where a family
record describes the architecture, otherwise by building the model on the meta device."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Optional

from budgetlora.budget.counting import Breakdown, count_trainable
from budgetlora.budget.rules import NeedsMeta, analyse, check_combination
from budgetlora.config import ModelConfig, RunConfig, check_prompt_fits, model_num_layers, resolved_method
from budgetlora.core.hub import load_hf_config, quiet_transformers
from budgetlora.errors import ConfigError
from budgetlora.modeling import Inventory, Module, module_inventory
from budgetlora.modeling.inventory import LAYER_INDEX

if TYPE_CHECKING:  # torch is imported lazily: `plan` must start fast
    import torch


def estimate(run: RunConfig, hf_config: Any, num_labels: int) -> Breakdown:
    """Trainable parameters of `run` on this model config, computed without any weights.

    Analytic for the families of `modeling.architectures` (roberta, xlm-roberta, camembert, bert,
    electra, mpnet, distilbert, deberta-v2; no torch model code or peft import); any other
    architecture, or a setting the analytic replay does not cover exactly, is built on the meta
    device and counted.
    """
    check_combination(run)
    if resolved_method(run) == "prompt":  # refused here too, before any weights load
        check_prompt_fits(hf_config, run)
    inv = module_inventory(hf_config, run.model.head, num_labels)
    if inv is not None:
        try:
            return analyse(run, inv).breakdown
        except NeedsMeta:
            pass
    return count_on_meta(run, hf_config, num_labels)


def count_on_meta(run: RunConfig, hf_config: Any, num_labels: int) -> Breakdown:
    """Build the classifier and add LoRA on the meta device (shapes, no memory), then count."""
    from budgetlora.modeling import build_on_meta

    run = copy.deepcopy(run)
    # The initialisation cannot change a count, and some (pissa, eva, loftq) need real weights.
    run.lora.init_lora_weights = "true"
    try:
        model = build_on_meta(hf_config, num_labels, run.model, run)
    except ValueError as e:  # peft's config checks, raised before add_lora's own translation
        raise ConfigError(f"target_modules/layers: {str(e).splitlines()[0]}") from None
    except TypeError as e:  # peft: "modules_to_save cannot be applied to modules of type ..."
        raise ConfigError(f"modules_to_train: {str(e).splitlines()[0]}") from None
    return count_trainable(model)


def inventory_from_model(model: "torch.nn.Module", head: str, model_type: str = "?") -> Inventory:
    """The inventory of an already built module tree (meta device is fine).

    Used for architectures without an analytic description, and by the tests, which check that
    `module_inventory` describes exactly what transformers builds.
    """
    from budgetlora.modeling import head_module_names

    mods = [m for m in (_module_of(name, mod) for name, mod in model.named_modules()) if m is not None]
    layers = {int(m.group("idx")) for m in (LAYER_INDEX.match(x.name) for x in mods) if m}
    hidden = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
    inv = Inventory(model_type, head, mods, head_module_names(model), max(layers) + 1 if layers else 0, hidden,
                    exact=False)
    linear_in_block = inv.linear_in_block()
    inv.roles = {"all": linear_in_block} if linear_in_block else {}
    return inv


def _module_of(name: str, mod: "torch.nn.Module") -> Optional[Module]:
    """One module of a built tree as an inventory entry: its kind, shape and own parameters; None
    for the root and for a container without parameters of its own."""
    import torch

    own = dict(mod.named_parameters(recurse=False))
    if not own:
        return Module(name, "none", 0, 0, 0, 0) if name and not any(True for _ in mod.children()) else None
    bias = own["bias"].numel() if own.get("bias") is not None else 0
    weight = sum(p.numel() for n, p in own.items() if n != "bias")
    if isinstance(mod, torch.nn.Linear):
        return Module(name, "linear", mod.in_features, mod.out_features, weight, bias)
    if isinstance(mod, torch.nn.Embedding):
        return Module(name, "embedding", mod.num_embeddings, mod.embedding_dim, weight, bias)
    if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return Module(name, "conv", mod.in_channels, mod.out_channels, weight, bias)
    if "norm" in type(mod).__name__.lower():
        return Module(name, "norm", 0, 0, weight, bias)
    # includes transformers' Conv1D, which peft adapts with transposed weights
    return Module(name, "other", 0, 0, weight, bias)


def load_config_only(model: str, num_labels: int) -> Any:
    """The transformers config of a Hub id, a local model folder or a config.json file.

    Nothing but the config is read, so a folder holding only config.json and the tokenizer is
    enough to plan or check a budget.
    """
    quiet_transformers()
    return load_hf_config(ModelConfig(model=model), num_labels)


def describe_model(hf_config: Any) -> str:
    """'roberta, 12 layers, hidden 768' for headers and messages."""
    layers = model_num_layers(hf_config)
    hidden = getattr(hf_config, "hidden_size", None)
    bits = [getattr(hf_config, "model_type", "?")]
    if layers:
        bits.append(f"{layers} layers")
    if hidden:
        bits.append(f"hidden {hidden}")
    return ", ".join(bits)
