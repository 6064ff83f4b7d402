"""The fast paths' switches: attention kernel choice, the encoder's dropout and the first-token last
layer (issue #4)."""

from __future__ import annotations

import copy

import pytest
import torch

from budgetlora.cli import main
from budgetlora.config import ModelConfig, load_config
from budgetlora.errors import ConfigError
from budgetlora.modeling import (
    add_lora,
    build_classifier,
    build_classifier_from_config,
    resolve_attn_implementation,
    PackedLinear,
    load_trained,
    pack_linear_layers,
    packed_linear_available,
    set_encoder_dropout,
)
from tiny import ARCH_CONFIGS, tiny_config

HEAD_PARTS = ("classifier", "pre_classifier", "pooler")  # modules outside the pretrained encoder


def _dropouts(model: torch.nn.Module) -> tuple[set[float], set[float]]:
    """(encoder dropout probabilities, head dropout probabilities), attention's float ones included."""
    encoder, head = set(), set()
    for name, mod in model.named_modules():
        in_head = any(part in name.split(".") for part in HEAD_PARTS) or name == "dropout"
        if isinstance(mod, torch.nn.Dropout):
            (head if in_head else encoder).add(mod.p)
        for attr in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(mod, attr, None), float):
                encoder.add(getattr(mod, attr))
    return encoder, head


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
@pytest.mark.parametrize("head", ["default", "linear"])
def test_encoder_dropout_zeroes_the_encoder_and_keeps_the_head(arch, head):
    pretrained = ModelConfig(model="tiny", head=head, encoder_dropout=None)
    _, pretrained_heads = _dropouts(build_classifier_from_config(pretrained, tiny_config(arch)))
    model = build_classifier_from_config(ModelConfig(model="tiny", head=head, encoder_dropout=0.0), tiny_config(arch))
    encoder, heads = _dropouts(model)
    assert encoder == {0.0}, arch
    assert heads == pretrained_heads and heads - {0.0}, f"{arch}: the head's dropout changed"


def test_encoder_dropout_is_off_by_default():
    assert ModelConfig().encoder_dropout == 0.0


def test_encoder_dropout_none_keeps_the_pretrained_values():
    model = build_classifier_from_config(ModelConfig(model="tiny", encoder_dropout=None), tiny_config("roberta"))
    set_encoder_dropout(model, None)
    assert _dropouts(model) == ({0.1}, {0.1})


def test_encoder_dropout_reaches_the_loaded_model(tiny_model_dir):
    model = build_classifier(ModelConfig(model=str(tiny_model_dir), encoder_dropout=0.05), 4)
    encoder, heads = _dropouts(model)
    assert encoder == {0.05} and heads == {0.1}


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_encoder_dropout_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="encoder_dropout"):
        load_config(None, {"encoder_dropout": bad})


def test_encoder_dropout_flag_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--model", "x", "--train-file", "x.csv", "--output-dir", str(tmp_path / "r"),
                 "--encoder-dropout", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "encoder_dropout" in err and len(err.splitlines()) == 1


def test_auto_attention_is_eager_on_cpu_and_sdpa_on_gpu(monkeypatch):
    assert resolve_attn_implementation("sdpa") == "sdpa"
    assert resolve_attn_implementation("eager") == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attn_implementation("auto") == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_attn_implementation("auto") == "sdpa"


def test_the_default_builds_the_resolved_kernel(tiny_model_dir):
    model = build_classifier(ModelConfig(model=str(tiny_model_dir)), 4)
    assert model.config._attn_implementation == resolve_attn_implementation("auto")


def test_eager_and_sdpa_give_the_same_logits(tiny_model_dir):
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    logits = []
    for kernel in ("eager", "sdpa"):
        torch.manual_seed(1)
        model = build_classifier(ModelConfig(model=str(tiny_model_dir), attn_implementation=kernel), 4).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids, attention_mask=mask).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-4)


# --- first_token_last_layer ----------------------------------------------------------------------


def _pair(arch: str, head: str, pooling: str = "first") -> tuple[torch.nn.Module, torch.nn.Module]:
    """(plain model, model with the option on), same weights."""
    plain = build_classifier_from_config(
        ModelConfig(model="tiny", head=head, pooling=pooling, first_token_last_layer=False), tiny_config(arch))
    cut = build_classifier_from_config(ModelConfig(model="tiny", head=head, pooling=pooling), tiny_config(arch))
    cut.load_state_dict(plain.state_dict())
    return plain, cut


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return ids, mask


def _linear_rows(model: torch.nn.Module, ids, mask) -> int:
    """Rows (tokens) that went through the model's Linear layers in one forward pass."""
    rows = [0]
    hooks = [m.register_forward_pre_hook(lambda _m, args: rows.__setitem__(0, rows[0] + args[0].numel() // args[0].shape[-1]))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return rows[0]


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
@pytest.mark.parametrize("head", ["default", "linear"])
def test_first_token_last_layer_gives_the_same_logits_for_less_work(arch, head):
    plain, cut = _pair(arch, head)
    plain.eval(), cut.eval()
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(cut(input_ids=ids, attention_mask=mask).logits,
                                   plain(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)
    assert _linear_rows(cut, ids, mask) < _linear_rows(plain, ids, mask), f"{arch}: no work was saved"


def _first_query_modules(model: torch.nn.Module) -> list[str]:
    from budgetlora.modeling import FIRST_QUERY_ATTENTION

    return [n for n, m in model.named_modules()
            if getattr(getattr(m, "config", None), "_attn_implementation", None) == FIRST_QUERY_ATTENTION]


@pytest.mark.parametrize("arch,kernel", [(a, k) for a in sorted(ARCH_CONFIGS) for k in ("eager", "sdpa")
                                         if k == "eager" or a not in ("mpnet", "deberta-v2")])  # no SDPA there
def test_first_query_attention_in_the_last_layer_gives_the_same_logits(arch, kernel):
    """BERT-style and DistilBERT layers compute the last layer's attention for the first query
    only, with either kernel; the other layers, the masks and the other architectures keep theirs."""
    settings = dict(model="tiny", attn_implementation=kernel)
    plain = build_classifier_from_config(ModelConfig(**settings, first_token_last_layer=False), tiny_config(arch)).eval()
    cut = build_classifier_from_config(ModelConfig(**settings), tiny_config(arch)).eval()
    cut.load_state_dict(plain.state_dict())
    calls = []
    import budgetlora.modeling.fast_paths as model_module

    real = model_module._first_query_attention
    from transformers import AttentionInterface

    AttentionInterface.register(model_module.FIRST_QUERY_ATTENTION, lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    try:
        ids, mask = _batch()
        with torch.no_grad():
            torch.testing.assert_close(cut(input_ids=ids, attention_mask=mask).logits,
                                       plain(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)
            # no padding at all: SDPA then gets no mask
            torch.testing.assert_close(cut(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    finally:
        AttentionInterface.register(model_module.FIRST_QUERY_ATTENTION, real)
    interface = arch not in ("mpnet", "deberta-v2")
    assert (len(_first_query_modules(cut)) == 1) == interface and not _first_query_modules(plain)
    assert len(calls) == (2 if interface else 0), "called once per forward pass, by the last layer alone"
    assert plain.config._attn_implementation == cut.config._attn_implementation == kernel


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "deberta-v2"])
def test_first_token_last_layer_gives_the_same_lora_gradients(arch):
    """Training through the cut layer: same loss and same gradients for every trainable tensor,
    LoRA on the last layer's feed-forward matmuls included."""
    targets = {"roberta": ["query", "value", "intermediate.dense"], "distilbert": ["q_lin", "v_lin", "lin1"],
               "deberta-v2": ["query_proj", "value_proj", "intermediate.dense"]}[arch]
    run = load_config(None, {"target_modules": targets, "lora_dropout": 0.0})
    grads = []
    for model in _pair(arch, "default"):
        torch.manual_seed(3)
        peft_model = add_lora(model, run)
        peft_model.train()
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the A side a gradient too
                torch.nn.init.normal_(p, std=0.02)
        set_encoder_dropout(peft_model, 0.0)
        for m in peft_model.modules():  # the head's dropout too: both passes must be deterministic
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        ids, mask = _batch()
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert grads[0][1].keys() == grads[1][1].keys()
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("setting", [dict(head="linear", pooling="mean"), dict(first_token_last_layer=False)])
def test_first_token_last_layer_stays_off_where_it_would_change_the_output(setting):
    model = build_classifier_from_config(ModelConfig(model="tiny", **setting), tiny_config("roberta"))
    assert not any(m._forward_hooks for m in model.modules())


def test_first_token_last_layer_survives_lora_merging(tiny_model_dir, tiny_train_csv, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv), "--output-dir",
                 str(run_dir), "--epochs", "1", "--max-steps", "2", "--val-fraction", "0.2"]) == 0
    merged, _, _ = load_trained(run_dir)
    assert sum(len(m._forward_hooks) for m in merged.modules()) == 1
    assert len(_first_query_modules(merged)) == 1
    plain, _, _ = load_trained(run_dir, settings=ModelConfig(first_token_last_layer=False))
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits,
                                   plain(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)


# --- packed linear layers for bf16 CPU inference ----------------------------------------------

requires_onednn = pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch build has no oneDNN linear ops")


# Largest logit difference to fp32 that bf16 rounding gives these seeded models: 0.008-0.022 for the
# plain and the packed layers alike; a feed-forward activation lost in the swap gives 0.5-2.1.
BF16_LOGIT_ERROR = 0.05


def _fp32_bf16_and_packed(settings: ModelConfig, hf_config) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(an fp32 model, its bf16 copy, a second bf16 copy to pack). Seeded, with Linear weights large
    enough that the logits are O(1), so a wrong kernel cannot hide in them."""
    torch.manual_seed(0)
    fp32 = build_classifier_from_config(settings, hf_config).eval()
    with torch.no_grad():
        for m in fp32.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape) / m.in_features ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape) * 0.1)
    plain = copy.deepcopy(fp32).to(torch.bfloat16)
    return fp32, plain, copy.deepcopy(plain)


def _logit_error(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    ids, mask = _batch()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask).logits.float()
        ref = reference(input_ids=ids, attention_mask=mask).logits.float()
    assert ref.abs().max() > 0.3, "logits this small would hide a wrong kernel"
    return (out - ref).abs().max().item()


@requires_onednn
@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
@pytest.mark.parametrize("head", ["default", "linear"])
def test_packed_linear_layers_compute_what_the_plain_ones_do(arch, head):
    """Every Linear swapped, each layer's feed-forward GELU fused into its matmul; the logits stay
    within bf16 rounding of fp32, like the plain bf16 model's."""
    fp32, plain, packed = _fp32_bf16_and_packed(ModelConfig(model="tiny", head=head), tiny_config(arch))
    linears = sum(type(m) is torch.nn.Linear for m in plain.modules())
    assert pack_linear_layers(packed) == linears
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert sum(m.post_op == "gelu" for m in packed.modules() if isinstance(m, PackedLinear)) == 2  # one per layer
    assert _logit_error(plain, fp32) < BF16_LOGIT_ERROR and _logit_error(packed, fp32) < BF16_LOGIT_ERROR, arch
    assert _logit_error(copy.deepcopy(packed), packed) == 0.0, "a deep copy computes the same"


@requires_onednn
@pytest.mark.parametrize("act,fused", [("gelu", "gelu"), ("gelu_pytorch_tanh", "gelu"), ("relu", None), ("gelu_new", None)])
def test_packed_linear_layers_fuse_only_activations_onednn_computes_alike(act, fused):
    fp32, plain, packed = _fp32_bf16_and_packed(ModelConfig(model="tiny"), tiny_config("bert", hidden_act=act))
    pack_linear_layers(packed)
    intermediates = [m for n, m in packed.named_modules() if n.endswith("intermediate")]
    assert [m.dense.post_op for m in intermediates] == [fused or "none"] * 2
    assert all(isinstance(m.intermediate_act_fn, torch.nn.Identity) == bool(fused) for m in intermediates)
    assert _logit_error(plain, fp32) < BF16_LOGIT_ERROR and _logit_error(packed, fp32) < BF16_LOGIT_ERROR


def test_packed_linear_layers_leave_an_fp32_model_alone():
    model = build_classifier_from_config(ModelConfig(model="tiny"), tiny_config("roberta")).eval()
    assert pack_linear_layers(model) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


@requires_onednn
def test_a_bf16_run_is_served_with_packed_linear_layers_unless_turned_off(tiny_model_dir, tiny_train_csv, tmp_path):
    from budgetlora.inference.runner import LoadedRun

    runs = {}
    for packed in (True, False):
        runs[packed] = tmp_path / f"run-{packed}"
        assert main(["train", "--model", str(tiny_model_dir), "--train-file", str(tiny_train_csv), "--output-dir",
                     str(runs[packed]), "--epochs", "1", "--max-steps", "2", "--val-fraction", "0.2",
                     "--precision", "bf16", "--packed-cpu-linear" if packed else "--no-packed-cpu-linear"]) == 0
    served = {packed: LoadedRun(run_dir) for packed, run_dir in runs.items()}
    assert all(run.precision == "bf16" for run in served.values())
    assert any(isinstance(m, PackedLinear) for m in served[True].model.modules())
    assert not any(isinstance(m, PackedLinear) for m in served[False].model.modules())


# --- the console entry point's garbage-collector settings -------------------------------------


@pytest.fixture
def restore_gc():
    import gc

    yield
    gc.unfreeze()
    gc.enable()


def test_entry_imports_model_commands_without_collections_then_collects_as_usual(monkeypatch, restore_gc):
    import gc
    import sys

    from budgetlora import cli

    seen = {}

    def fake_main(argv):
        seen.update(argv=argv, enabled=gc.isenabled(), frozen=gc.get_freeze_count(), peft="peft" in sys.modules)
        return 7

    monkeypatch.setattr(cli, "main", fake_main)
    gc.unfreeze()
    assert cli.entry(["predict", "--run", "r"]) == 7
    assert seen["argv"] == ["predict", "--run", "r"]
    assert seen["enabled"] and seen["peft"], "the command must run with the collector on, after the imports"
    assert seen["frozen"] > 10_000, "the imported objects should be out of the collector's sight"
    assert gc.get_freeze_count() >= seen["frozen"], "frozen again at exit"


def test_entry_keeps_light_commands_light(monkeypatch, restore_gc):
    import gc

    from budgetlora import cli

    calls = []
    monkeypatch.setattr(gc, "disable", lambda: calls.append("disable"))
    monkeypatch.setattr(cli, "main", lambda argv: 0)
    assert cli.entry(["plan", "--model", "x"]) == 0
    assert calls == []


# --- the console entry point's allocator setting --------------------------------------------


def test_keep_freed_memory_applies_on_glibc_and_leaves_user_settings_alone(monkeypatch):
    import platform
    import sys

    from budgetlora import cli

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert cli.keep_freed_memory() is False, "the user's own malloc settings win"
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    assert cli.keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert cli.keep_freed_memory() is glibc


def test_entry_sets_the_allocator_for_model_commands_only(monkeypatch, restore_gc):
    from budgetlora import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("set") or True)
    monkeypatch.setattr(cli, "main", lambda argv: 0)
    assert cli.entry(["plan", "--model", "x"]) == 0
    assert calls == []
    assert cli.entry(["predict", "--run", "r"]) == 0
    assert calls == ["set"]
