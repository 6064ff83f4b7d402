"""Every family record's facts hold for what transformers builds, for each model type it covers.

tests/unit/budget/test_budget.py checks the module lists on config variants of six types; here
each fact of a record is checked once on every type, xlm-roberta and camembert included.
"""

from __future__ import annotations

import sys

import pytest
from torch import nn

from budgetlora.budget import inventory_from_model
from budgetlora.config import ModelConfig
from budgetlora.modeling import FAMILIES, build_classifier_from_config, family_of, module_inventory
from tiny import ARCH_CONFIGS, tiny_config

MODEL_TYPES = [t for f in FAMILIES for t in f.model_types]


def _config(model_type: str):
    if model_type in ARCH_CONFIGS:
        return tiny_config(model_type)
    from transformers import AutoConfig

    # the bert-like types without a tiny config of their own (xlm-roberta, camembert)
    return AutoConfig.for_model(model_type, vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=130, type_vocab_size=1, num_labels=4)


def test_each_model_type_has_one_family():
    assert len(MODEL_TYPES) == len(set(MODEL_TYPES))
    assert all(family_of(t).prefixes[t] for t in MODEL_TYPES)
    assert family_of("albert") is None and family_of(None) is None


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("head", ["default", "linear"])
def test_the_record_describes_the_built_model(model_type, head):
    family, hf_config = family_of(model_type), _config(model_type)
    model = build_classifier_from_config(ModelConfig(model="tiny", head=head, first_token_last_layer=False), hf_config)
    analytic, built = module_inventory(hf_config, head, 4), inventory_from_model(model, head)
    shapes = {m.name: (m.kind, m.weight, m.bias, (m.in_features, m.out_features) if m.kind == "linear" else None)
              for m in built.modules}
    assert {m.name: (m.kind, m.weight, m.bias, (m.in_features, m.out_features) if m.kind == "linear" else None)
            for m in analytic.modules} == shapes
    assert analytic.num_layers == built.num_layers == hf_config.num_hidden_layers
    if head == "default":
        assert model.base_model_prefix == family.prefixes[model_type]
        assert tuple(built.head_names) == family.head_names
    block = model.get_submodule(f"{built.block_prefix}.0")
    assert all(isinstance(block.get_submodule(name), nn.Linear) for name in family.roles.values())
    assert set(analytic.roles) == {"qv", "qkv", "attn", "all"}


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_the_fast_paths_parts_exist(family):
    """The parts `first_token_last_layer` cuts and the feed-forward pair `pack_linear_layers` fuses."""
    model_type = family.model_types[0]
    model = build_classifier_from_config(ModelConfig(model="tiny", first_token_last_layer=False), _config(model_type))
    inv = module_inventory(model.config, "default", 4)
    last = model.get_submodule(f"{inv.block_prefix}.{inv.num_layers - 1}")
    ffn_input, self_attention = family.last_layer_parts
    assert isinstance(getattr(last, ffn_input), nn.Module)
    if self_attention is not None:  # a module whose code calls transformers' attention interface
        attention = last.get_submodule(self_attention)
        assert hasattr(sys.modules[type(attention).__module__], "eager_attention_forward")
    linear_name, act_name = family.ffn_pair
    pairs = [m for m in last.modules() if isinstance(getattr(m, linear_name, None), nn.Linear)
             and isinstance(getattr(m, act_name, None), nn.Module)]
    assert len(pairs) == 1, f"{family.name}: one feed-forward block per layer"
