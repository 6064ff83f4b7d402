"""Every method's count from the config alone == peft's count on the built model, per kind.

As in test_budget.py the oracle is peft: the model is built as training builds it and counted with
`count_trainable` and `get_nb_trainable_parameters()`; the analytic replay (`analyse`) is checked on
its own so that a silent fall-back to meta-device counting cannot make the test pass.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from budgetlora.budget import KINDS, NeedsMeta, analyse, count_trainable, estimate
from budgetlora.budget.methods import factorization, lokr_params
from budgetlora.config import METHODS, from_dict
from budgetlora.errors import BudgetError, ConfigError
from budgetlora.modeling import add_lora, build_classifier_from_config, module_inventory
from test_budget import ARCHS, SUFFIXES, _tiny, variants

# The kinds each method may train besides the head (and biases where --bias asks for them).
OWN_KINDS = {
    "lora": {"lora_A", "lora_B"}, "rslora": {"lora_A", "lora_B"}, "dora": {"lora_A", "lora_B", "dora_magnitude"},
    "adalora": {"lora_A", "lora_B", "adalora_E"}, "vera": {"vera_lambda"}, "fourierft": {"fourier_spectrum"},
    "lokr": {"kronecker"}, "loha": {"hadamard"}, "ia3": {"ia3_scale"}, "layernorm": {"layernorm"},
    "prompt": {"prompt"}, "bias": {"bias"}, "full": {"other"},
}
TAKES_BIAS = {"lora", "dora", "rslora", "adalora", "vera", "fourierft"}
TAKES_LAYERS = TAKES_BIAS | {"lokr", "loha"}


@st.composite
def method_settings(draw, arch: str, num_layers: int, method: str) -> dict:
    d: dict = {"method": method, "head": draw(st.sampled_from(["default", "linear"]))}
    if method not in ("bias", "layernorm", "prompt", "full"):
        if draw(st.integers(0, 3)) == 0:
            d["target_modules"] = "all-linear"
        else:
            d["target_modules"] = draw(st.lists(st.sampled_from(SUFFIXES[arch]), min_size=1, max_size=3, unique=True))
            if method in TAKES_LAYERS and draw(st.booleans()):
                d["layers"] = draw(st.lists(st.integers(0, num_layers - 1), min_size=1, max_size=2, unique=True))
    if method in TAKES_BIAS:
        d["bias"] = draw(st.sampled_from(["none", "all", "lora_only"]))
    if method in ("lokr", "loha") and draw(st.booleans()):
        d["rank_pattern"] = {"dense": draw(st.integers(1, 4))}
    d["r"] = draw(st.integers(1, 9))
    d["vera_r"] = draw(st.integers(1, 40))
    d["fourierft_n_frequency"] = draw(st.sampled_from([1, 7, 64, 1024, 5000]))  # 5000 > 32 x 64: refused
    d["lokr_decompose_factor"] = draw(st.sampled_from([-1, 2, 4, 5]))
    d["lokr_decompose_both"] = draw(st.booleans())
    d["adalora_init_r"] = draw(st.integers(2, 8))
    d["adalora_target_r"] = 1
    d["num_virtual_tokens"] = draw(st.integers(1, 12))
    # the tiny models have 128-130 positions: room for the tokens before 64-token texts, none (a
    # refusal, by peft-free check and estimate alike) before 125-token ones
    d["max_length"] = draw(st.sampled_from([64, 64, 64, 125]))
    if method == "ia3" and isinstance(d["target_modules"], list):
        d["ia3_feedforward_modules"] = draw(st.lists(st.sampled_from(d["target_modules"]), max_size=2, unique=True))
    if method in ("lora", "vera", "ia3", "layernorm") and draw(st.integers(0, 3)) == 0:
        d["modules_to_train"] = ["LayerNorm"]
    return d


def _built(run, hf_config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return add_lora(build_classifier_from_config(run.model, hf_config), run)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_method_is_counted_exactly_from_the_config(arch, method, data):
    variant = data.draw(variants(arch), label="config variant")
    num_labels = data.draw(st.integers(2, 5), label="labels")
    hf_config = _tiny(arch, num_labels, variant)
    layers = variant.get("num_hidden_layers", variant.get("n_layers"))
    settings_ = data.draw(method_settings(arch, layers, method), label="run")
    run = from_dict(settings_).validate()
    try:
        model = _built(run, hf_config)
    except (ConfigError, ValueError, TypeError):
        event("peft refuses")
        with pytest.raises(ConfigError):
            estimate(run, hf_config, num_labels)
        return
    measured = count_trainable(model)
    peft_count = (model.get_nb_trainable_parameters()[0] if hasattr(model, "get_nb_trainable_parameters")
                  else sum(p.numel() for p in model.parameters() if p.requires_grad))  # BitFit: no peft
    assert measured.total == peft_count
    assert estimate(run, hf_config, num_labels) == measured
    inv = module_inventory(hf_config, run.model.head, num_labels)
    try:
        analytic = analyse(run, inv).breakdown
    except NeedsMeta as e:
        # documented corners only: LoRA-style adapters on embeddings, modules_to_train with another method
        assert any(w in str(e) for w in ("embedding", "modules_to_train", "nested", "saved whole", "also matches")), e
        event("counted on meta only")
        return
    assert analytic == measured, f"{analytic.describe()} != peft {measured.describe()}"
    event("analytic count")
    used = {k for k in KINDS if getattr(measured, k)}
    allowed = OWN_KINDS[run.adapter.method] | {"head", "bias", "other"}
    if run.adapter.method in ("lora", "dora", "rslora") and (run.lora.use_dora or run.adapter.method == "dora"):
        allowed |= {"dora_magnitude"}
    assert used <= allowed and used & OWN_KINDS[run.adapter.method], (run.adapter.method, used)


def test_lokr_replays_peft_factorization():
    from peft.tuners.lokr.layer import factorization as peft_factorization

    for dim in (1, 7, 32, 64, 96, 384, 768, 1536, 3072, 4099):
        for factor in (-1, 1, 2, 3, 4, 8, 16, 100):
            assert factorization(dim, factor) == peft_factorization(dim, factor), (dim, factor)
    # a 768 -> 768 layer at r=8: 768 = 24 x 32, so w1 is 24x24 whole and w2 (32x32) is split in
    # two rank-8 matrices, as r < 32 / 2
    assert lokr_params(768, 768, 8) == 24 * 24 + 8 * (32 + 32)
    assert lokr_params(768, 768, 16) == 24 * 24 + 32 * 32


def test_over_budget_method_is_refused_before_any_weights_load(tmp_path, tiny_train_csv):
    """Only config.json and the tokenizer are in the folder: a refusal proves no weights were needed."""
    from tiny import make_tokenizer, tiny_config

    from budgetlora.config import load_config
    from budgetlora.training.trainer import train

    folder = tmp_path / "config-only"
    tok = make_tokenizer(folder)
    tiny_config("roberta", vocab_size=len(tok), pad_token_id=tok.pad_token_id).save_pretrained(str(folder))
    cases = [("vera", {"vera_r": 4096}, BudgetError, "budget of 1,200"),
             ("prompt", {"num_virtual_tokens": 60, "max_length": 64}, BudgetError, "budget of 1,200"),
             ("bias", {}, BudgetError, "budget of 1,200"),
             ("prompt", {"num_virtual_tokens": 500}, ConfigError, "exceed the 130 positions")]
    for i, (method, extra, error, says) in enumerate(cases):
        out = tmp_path / f"{method}{i}"
        cfg = load_config(None, {"model": str(folder), "train_file": str(tiny_train_csv), "method": method,
                                 "output_dir": str(out), "budget": 1_200, **extra})
        with pytest.raises(error) as err:
            train(cfg)
        assert "\n" not in str(err.value) and says in str(err.value)
        assert not out.exists()


def test_budget_advice_names_the_method_knob():
    from budgetlora.budget import Breakdown, check_budget

    with pytest.raises(BudgetError, match="--vera-r"):
        check_budget(Breakdown(vera_lambda=900, head=200), 1_000)
    with pytest.raises(BudgetError, match="--adalora-init-r") as err:
        check_budget(Breakdown(lora_A=500, lora_B=500, adalora_E=30), 1_000)
    assert "a smaller --r," not in str(err.value)


def test_full_fine_tuning_over_budget_says_to_raise_the_budget():
    from budgetlora.budget.counting import Breakdown, check_budget
    from budgetlora.errors import BudgetError

    with pytest.raises(BudgetError, match=r"full fine-tuning trains all 1,000 parameters.*pass --budget 1001 or more"):
        check_budget(Breakdown(other=900, head=100), 1000, "full")
    check_budget(Breakdown(other=900, head=100), 1001, "full")


def test_adalora_needs_a_rank_to_prune():
    # peft's allocator fails inside training (torch.kthvalue with k=0) when init_r == target_r.
    with pytest.raises(ConfigError, match="not below --adalora-init-r 1") as err:
        from_dict({"method": "adalora", "adalora_init_r": 1, "adalora_target_r": 1}).validate()
    assert "\n" not in str(err.value)
    from_dict({"method": "adalora", "adalora_init_r": 2, "adalora_target_r": 1}).validate()


def test_plan_never_offers_adalora_at_init_r_1():
    from budgetlora.budget.planner import plan

    cfg = _tiny("bert", 4, {"num_hidden_layers": 2})
    # Budgets at which AdaLoRA's rank-1 placements fit but many rank-2 ones do not.
    for budget in (600, 900, 1_500, 3_000):
        candidates, _ = plan(cfg, budget, methods=["adalora"])
        assert all(c.size >= 2 and c.settings()["adalora_target_r"] < c.size for c in candidates)
        for c in candidates:
            from_dict(c.settings()).validate()  # each one is a valid run configuration
