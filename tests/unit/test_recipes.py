"""Every recipe under recipes/ loads; the seed recipes reproduce the published parameter counts;
layer indices written for another depth (`layers_relative_to`) map the same way for the budget
count and for the model that trains."""

from __future__ import annotations


import pytest
import yaml

from budgetlora import budget
from budgetlora.config import load_config, map_layer_index, resolve_relative_layers
from budgetlora.errors import ConfigError

from conftest import REPO, shared_path

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES}
    assert {"seeds/r8-qv-lora-only.yaml", "seeds/r6-qkv.yaml", "seeds/r12-chosen-layers.yaml",
            "search/minilm-space.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_every_recipe_loads_and_says_how_to_run_it(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "space" in data:  # a `budgetlora search` space: its base recipe must load too
        from budgetlora.commands.search import load_space

        space = load_space(path)
        space.base_config().validate()
        command = "budgetlora search --space"
    else:
        load_config(path)
        command = "budgetlora train --config"
    header = path.read_text(encoding="utf-8").splitlines()[0]
    rel = path.relative_to(REPO).as_posix()
    assert header.startswith("# ") and f"{command} {rel}" in header, header


@pytest.mark.parametrize("recipe, total", [
    ("r8-qv-lora-only.yaml", 907_012), ("r6-qkv.yaml", 925_444), ("r12-chosen-layers.yaml", 796_420),
])
def test_seed_recipes_reproduce_the_published_counts(recipe, total):
    hf_config = budget.load_config_only(str(shared_path("models", "roberta-base-tokenizer")), 4)
    cfg = load_config(REPO / "recipes" / "seeds" / recipe)
    assert budget.estimate(cfg, hf_config, 4).total == total
    assert budget.count_on_meta(cfg, hf_config, 4).total == total


def test_layer_indices_map_to_the_same_relative_depth():
    assert [map_layer_index(i, 12, 6) for i in (0, 1, 5, 10, 11)] == [0, 0, 2, 5, 5]
    assert [map_layer_index(i, 12, 12) for i in range(12)] == list(range(12))
    assert [map_layer_index(i, 6, 12) for i in range(6)] == [0, 2, 4, 7, 9, 11]
    cfg = load_config(None, {"layers": "0,1,5,10,11", "layers_relative_to": 12})
    assert cfg.lora.resolved_layers(6) == [0, 2, 5]  # duplicates dropped
    assert cfg.lora.resolved_layers(2) == [0, 1]
    plain = load_config(None, {"layers": "0,1"})
    assert resolve_relative_layers(plain, 6) is plain  # nothing to map: indices as given
    named = load_config(REPO / "recipes" / "seeds" / "r12-chosen-layers.yaml")
    assert resolve_relative_layers(named, 6).lora.target_modules == [
        "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value", "encoder.layer.2.attention.self.query",
        "encoder.layer.5.attention.self.query", "encoder.layer.5.output.dense",
    ]
    for bad in ({"layers_relative_to": 1}, {"layers": "0,12", "layers_relative_to": 12},
                {"target_modules": "encoder.layer.12.output.dense,", "layers_relative_to": 12}):
        with pytest.raises(ConfigError, match="layers_relative_to"):
            load_config(None, bad)


@pytest.mark.parametrize("head", ["default", "linear"])
@pytest.mark.parametrize("settings", [
    {"layers": "0,1,5,10,11", "layers_relative_to": 12, "target_modules": "query,value"},
    {"layers": "11", "layers_relative_to": 12, "target_modules": "query,key,value,dense", "bias": "lora_only"},
    "seed-c",
])
def test_budget_count_and_built_model_use_the_same_mapping(head, settings):
    """The analytic estimate, peft on meta and the real model built by model.add_lora agree."""
    import transformers

    from budgetlora.modeling import add_lora, build_classifier_from_config

    if settings == "seed-c":
        cfg = load_config(REPO / "recipes" / "seeds" / "r12-chosen-layers.yaml", {"head": head})
    else:
        cfg = load_config(None, {**settings, "head": head, "r": 4})
    hf = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64, num_labels=4)
    estimated = budget.estimate(cfg, hf, 4)
    model = add_lora(build_classifier_from_config(cfg.model, hf), cfg)
    measured = budget.count_trainable(model)
    assert estimated.as_dict() == measured.as_dict() == budget.count_on_meta(cfg, hf, 4).as_dict()
    adapted = {int(n.split("layer.")[1].split(".")[0]) for n, _ in model.named_parameters() if "lora_A" in n}
    expected = {"seed-c": {0, 2, 5}}.get(settings if isinstance(settings, str) else "", None)
    expected = expected or set(cfg.lora.resolved_layers(6))
    assert adapted == expected
