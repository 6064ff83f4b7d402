"""The parameter count: analytic estimate == peft's own count, to the parameter.

The oracle is always peft itself: the model is built exactly as training builds it
(`build_classifier_from_config` + `add_lora`) and counted with `count_trainable` and with
`get_nb_trainable_parameters()`. The analytic replay (`analyse`) is checked separately from
`estimate`, so a silent fall-back to meta-device counting cannot make these tests pass.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from budgetlora.budget import (
    KINDS, Breakdown, NeedsMeta, analyse, check_budget, count_on_meta, count_trainable, estimate,
    inventory_from_model, load_config_only,
)
from budgetlora.config import from_dict
from budgetlora.errors import BudgetError, ConfigError, ModelLoadError
from budgetlora.modeling import add_lora, build_classifier_from_config, module_inventory
from conftest import REPO, shared_path
from tiny import ARCH_CONFIGS, tiny_config

ARCHS = list(ARCH_CONFIGS)

# Module-name suffixes each architecture really has, plus a few that exercise peft's matching
# rules (a dotted suffix, 'dense' matching three modules per block, bert's pooler).
SUFFIXES = {
    "roberta": ["query", "key", "value", "dense", "output.dense", "attention.output.dense", "intermediate.dense", "self.query"],
    "bert": ["query", "key", "value", "dense", "output.dense", "attention.output.dense", "pooler.dense"],
    "electra": ["query", "key", "value", "dense", "intermediate.dense", "embeddings_project"],
    "mpnet": ["q", "k", "v", "o", "attn.q", "dense", "intermediate.dense", "output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2", "ffn.lin1"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj", "dense", "output.dense", "embed_proj"],
}
# LoRA on an embedding, and names peft must refuse (norm, dropout) or ignore (no such module)
ODD_NAMES = ["word_embeddings", "LayerNorm", "dropout", "nonexistent"]
REGEXES = [
    r".*\.(query|value|q|v|q_lin|v_lin|query_proj|value_proj)",
    r".*layer\.1\..*",
    r".*(dense|lin1|lin2)",
    r".*\.attention\..*",  # also matches blocks of modules: peft refuses, so must estimate
]
RANK_PATTERNS = [{}, {r"layer\.1\..*": 2}, {"dense": 5}, {"(query|q|q_lin|query_proj)": 3, ".*": 1}]
MODULES_TO_TRAIN = [[], ["LayerNorm"], ["embeddings.LayerNorm"], ["word_embeddings"], ["dropout"]]


def _tiny(arch: str, num_labels: int, variant: dict):
    cfg = tiny_config(arch, num_labels=num_labels)
    for k, v in variant.items():
        setattr(cfg, k, v)
    return cfg


@st.composite
def variants(draw, arch: str) -> dict:
    """Config variants that change which modules exist (embedding projections, deberta's
    relative-position projections, convolution, extra norms)."""
    v: dict = {}
    if arch == "distilbert":
        v["n_layers"] = draw(st.sampled_from([2, 3]))
    else:
        v["num_hidden_layers"] = draw(st.sampled_from([2, 3]))
    if arch == "electra":
        v["embedding_size"] = draw(st.sampled_from([16, 32]))
    if arch == "bert":
        v["type_vocab_size"] = draw(st.sampled_from([1, 2]))
    if arch == "deberta-v2":
        v["share_att_key"] = draw(st.booleans())
        v["relative_attention"] = draw(st.booleans())
        v["pos_att_type"] = draw(st.sampled_from([["p2c", "c2p"], ["c2p"], ["p2c"], None]))
        v["position_biased_input"] = draw(st.booleans())
        v["type_vocab_size"] = draw(st.sampled_from([0, 2]))
        v["norm_rel_ebd"] = draw(st.sampled_from(["none", "layer_norm"]))
        v["conv_kernel_size"] = draw(st.sampled_from([0, 3]))
        v["position_buckets"] = draw(st.sampled_from([-1, 8]))
        if draw(st.booleans()):
            v["embedding_size"] = 16
    return v


@st.composite
def run_settings(draw, arch: str, num_layers: int) -> dict:
    kind = draw(st.sampled_from(["suffixes", "suffixes", "suffixes", "all-linear", "regex", "full names"]))
    d: dict = {"head": draw(st.sampled_from(["default", "linear"]))}
    if kind == "suffixes":
        d["target_modules"] = draw(st.lists(st.sampled_from(SUFFIXES[arch]), min_size=1, max_size=4, unique=True))
        if draw(st.integers(0, 3)) == 0:
            d["target_modules"].append(draw(st.sampled_from(ODD_NAMES)))
        if draw(st.booleans()):
            # may include an index past the last layer, which peft simply never matches
            d["layers"] = draw(st.lists(st.integers(0, num_layers), min_size=1, max_size=3, unique=True))
    elif kind == "all-linear":
        d["target_modules"] = "all-linear"
    elif kind == "regex":
        d["target_modules"] = draw(st.sampled_from(REGEXES))
    else:
        d["target_modules"] = "full names"  # filled in from the inventory by the test
        d["layers"] = draw(st.one_of(st.none(), st.just([1])))  # exact names ignore layers in peft
    d["r"] = draw(st.integers(1, 8))
    d["lora_alpha"] = draw(st.sampled_from([1, 16, 32]))
    d["rank_pattern"] = draw(st.sampled_from(RANK_PATTERNS))
    d["alpha_pattern"] = draw(st.sampled_from([{}, {"value": 8.0}]))
    d["bias"] = draw(st.sampled_from(["none", "all", "lora_only"]))
    d["use_dora"] = draw(st.booleans())
    d["modules_to_train"] = draw(st.sampled_from(MODULES_TO_TRAIN))
    return d


def _peft_model(run, hf_config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return add_lora(build_classifier_from_config(run.model, hf_config), run)


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_estimate_equals_peft_count_on_random_configurations(arch, data):
    variant = data.draw(variants(arch), label="config variant")
    num_labels = data.draw(st.integers(2, 5), label="labels")
    hf_config = _tiny(arch, num_labels, variant)
    layers = variant.get("num_hidden_layers", variant.get("n_layers"))
    settings_ = data.draw(run_settings(arch, layers), label="run")
    if settings_["target_modules"] == "full names":
        names = [m.name for m in module_inventory(hf_config, settings_["head"], num_labels).modules if m.kind == "linear"]
        settings_["target_modules"] = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
    run = from_dict(settings_).validate()

    try:
        model = _peft_model(run, hf_config)
    except (ConfigError, ValueError, TypeError):  # TypeError: peft refusing a modules_to_save
        model = None
    inv = module_inventory(hf_config, run.model.head, num_labels)
    assert inv is not None, f"{arch} must be described analytically"

    if model is None:  # peft refuses the configuration: so must the estimate, with a user error
        event("peft refuses")
        with pytest.raises(ConfigError):
            estimate(run, hf_config, num_labels)
        return
    measured = count_trainable(model)
    assert measured.total == model.get_nb_trainable_parameters()[0]
    assert estimate(run, hf_config, num_labels) == measured
    try:
        analytic = analyse(run, inv).breakdown
    except NeedsMeta as e:
        # Only the documented corners may leave the analytic path.
        assert any(w in str(e) for w in ("nested", "saved whole", "LoRA on a embedding", "also matches")), e
        event("counted on meta only")
        return
    event("analytic count")
    assert analytic == measured, f"{analytic.describe()} != peft {measured.describe()}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", ["default", "linear"])
def test_inventory_is_exactly_what_transformers_builds(arch, head):
    variants_ = [{}]
    if arch == "electra":
        variants_.append({"embedding_size": 16})
    if arch == "deberta-v2":
        variants_ += [
            {"share_att_key": True, "norm_rel_ebd": "layer_norm", "position_buckets": 8, "type_vocab_size": 2},
            {"relative_attention": False, "position_biased_input": True, "embedding_size": 16, "conv_kernel_size": 3},
        ]
    for variant in variants_:
        hf_config = _tiny(arch, 3, variant)
        model = build_classifier_from_config(from_dict({"head": head}).model, hf_config)
        built = inventory_from_model(model, head)
        analytic = module_inventory(hf_config, head, 3)

        def rows(inv):
            return {(m.name, m.kind, m.weight, m.bias) + ((m.in_features, m.out_features) if m.kind == "linear" else ())
                    for m in inv.modules}

        assert rows(analytic) == rows(built), (arch, head, variant)
        assert analytic.head_names == built.head_names


def test_count_trainable_counts_the_saved_head_once():
    hf_config = tiny_config("roberta")
    model = _peft_model(from_dict({"bias": "all", "target_modules": "all-linear"}), hf_config)
    counted = count_trainable(model)
    # classifier.original_module stays frozen; its trainable copy is the head
    assert counted.head == 32 * 32 + 32 + 32 * 4 + 4
    assert counted.total == model.get_nb_trainable_parameters()[0]


# ---------------------------------------------------------------------------------------------
# The published roberta-base counts
# ---------------------------------------------------------------------------------------------

NOTEBOOK_MODULES = [  # iamANIKETmane/Finetuning-LoRA, LoRA_DLProject-2.ipynb
    "roberta.encoder.layer.0.attention.self.query",
    "roberta.encoder.layer.0.attention.self.key",
    "roberta.encoder.layer.0.attention.self.value",
    "roberta.encoder.layer.1.attention.self.query",
    "roberta.encoder.layer.5.attention.self.query",
    "roberta.encoder.layer.10.attention.self.query",
    "roberta.encoder.layer.10.output.dense",
    "roberta.encoder.layer.11.output.dense",
]
SEEDS = [
    ({"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"], "bias": "lora_only"},
     Breakdown(lora_A=147_456, lora_B=147_456, head=593_668, bias=18_432), 907_012),
    ({"r": 6, "target_modules": ["query", "key", "value"]},
     Breakdown(lora_A=165_888, lora_B=165_888, head=593_668), 925_444),
    ({"r": 12, "lora_alpha": 32, "target_modules": NOTEBOOK_MODULES},
     Breakdown(lora_A=129_024, lora_B=73_728, head=593_668), 796_420),
]


@pytest.fixture(scope="module")
def roberta_base():
    return load_config_only(str(shared_path("models", "roberta-base-tokenizer", "config.json")), 4)


@pytest.mark.parametrize("settings_, expected, published", SEEDS, ids=["907012", "925444", "796420"])
def test_published_roberta_base_counts(roberta_base, settings_, expected, published):
    run = from_dict(settings_).validate()
    assert expected.total == published
    assert analyse(run, module_inventory(roberta_base, "default", 4)).breakdown == expected
    assert estimate(run, roberta_base, 4) == expected
    assert count_on_meta(run, roberta_base, 4) == expected


def test_796420_is_not_a_suffix_list_on_layers_0_1_5_10_11(roberta_base):
    """The notebook's README says 'layers [0, 1, 5, 10, 11]', but no suffix list restricted to
    those layers gives 796,420 at r=12: the count comes from its explicit list of 8 modules."""
    inv = module_inventory(roberta_base, "default", 4)
    names = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    totals = set()
    for n in range(1, len(names) + 1):
        for subset in itertools.combinations(names, n):
            for bias in ("none", "lora_only", "all"):
                run = from_dict({"r": 12, "target_modules": list(subset), "layers": [0, 1, 5, 10, 11], "bias": bias})
                totals.add(analyse(run, inv).breakdown.total)
    assert 796_420 not in totals
    assert 777_988 in totals  # query,value on those layers


# ---------------------------------------------------------------------------------------------
# Refusing, describing, loading
# ---------------------------------------------------------------------------------------------


def test_breakdown_api():
    b = Breakdown(lora_A=147_456, lora_B=147_456, head=593_668, bias=18_432)
    assert b.total == 907_012
    assert b.as_dict() == {**{k: 0 for k in KINDS}, "lora_A": 147_456, "lora_B": 147_456, "head": 593_668,
                           "bias": 18_432, "total": 907_012}
    assert list(b.as_dict())[:3] == ["lora_A", "lora_B", "dora_magnitude"]
    assert b.describe() == "lora_A 147,456 · lora_B 147,456 · head 593,668 · bias 18,432 = 907,012"
    assert Breakdown().describe() == "nothing trainable = 0"


def test_check_budget_is_strict_and_explains_itself():
    b = Breakdown(lora_A=147_456, lora_B=147_456, head=593_668, bias=18_432)
    check_budget(b, 907_013)
    for budget in (907_012, 500_000):
        with pytest.raises(BudgetError) as err:
            check_budget(b, budget)
        msg = str(err.value)
        assert "\n" not in msg
        assert "907,012" in msg and f"{budget:,}" in msg and b.describe() in msg
        assert "--head linear" in msg and "--r" in msg and "--target-modules" in msg and "--bias none" in msg
    with pytest.raises(BudgetError) as err:
        check_budget(Breakdown(lora_A=900_000, lora_B=900_000, head=3_076), 1_000_000)
    assert "--head linear" not in str(err.value)  # the head is not where the room goes


def test_over_budget_estimate_is_refused_before_anything_is_built():
    run = from_dict({"target_modules": "all-linear", "r": 8})
    with pytest.raises(BudgetError, match="lora_A"):
        check_budget(estimate(run, tiny_config("roberta"), 4), 500)


def test_peft_refusals_become_config_errors():
    cfg = tiny_config("roberta")
    for bad in ({"target_modules": "all-linear", "layers": [0]}, {"target_modules": ["LayerNorm"]},
                {"target_modules": ["nonexistent"]}, {"target_modules": ["query"], "layers": [7]},
                {"target_modules": ["classifier"]}):
        with pytest.raises(ConfigError):
            estimate(from_dict(bad), cfg, 4)


def test_unknown_architecture_is_counted_on_the_meta_device():
    import transformers

    cfg = transformers.AlbertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, embedding_size=16, num_labels=4)
    assert module_inventory(cfg, "default", 4) is None
    for settings_ in ({"target_modules": ["query", "value"], "bias": "lora_only"},
                      {"target_modules": "all-linear", "head": "linear", "use_dora": True}):
        run = from_dict(settings_)
        model = _peft_model(run, cfg)
        assert estimate(run, cfg, 4) == count_trainable(model)
        assert count_trainable(model).total == model.get_nb_trainable_parameters()[0]


def test_load_config_only_reads_folders_and_config_files(tmp_path):
    tiny_config("bert").save_pretrained(str(tmp_path))
    assert load_config_only(str(tmp_path), 7).num_labels == 7
    assert load_config_only(str(tmp_path / "config.json"), 3).model_type == "bert"
    (tmp_path / "broken.json").write_text("{not json")
    for missing in (str(tmp_path / "nope" / "model"), str(tmp_path / "broken.json")):
        with pytest.raises(ModelLoadError):
            load_config_only(missing, 4)


def test_estimating_imports_neither_peft_nor_the_model_code(tmp_path):
    """What keeps `plan` fast: the analytic count needs only the config and the family records
    (modeling.architectures, modeling.inventory and the native heads' name table
    modeling.head_specs), none of the code that builds a model."""
    tiny_config("roberta").save_pretrained(str(tmp_path))
    code = (
        "import sys, json\n"
        "from budgetlora.budget import estimate, load_config_only\n"
        "from budgetlora.config import from_dict\n"
        f"cfg = load_config_only({str(tmp_path)!r}, 4)\n"
        "b = estimate(from_dict({'target_modules': 'all-linear'}), cfg, 4)\n"
        "model_code = [m for m in sys.modules if m.startswith('budgetlora.modeling.')\n"
        "              and m not in ('budgetlora.modeling.architectures', 'budgetlora.modeling.inventory',\n"
        "                            'budgetlora.modeling.head_specs')]\n"
        "print(json.dumps([b.total, 'peft' in sys.modules, model_code]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    total, peft_loaded, model_code = json.loads(out.stdout.strip().splitlines()[-1])
    assert total > 0 and not peft_loaded and model_code == []
