"""The fast paths' switches: attention kernel choice and the encoder's dropout (issue #4)."""

from __future__ import annotations

import pytest
import torch

from budgetlora.cli import main
from budgetlora.config import ModelConfig, load_config
from budgetlora.errors import ConfigError
from budgetlora.model import (
    build_classifier,
    build_classifier_from_config,
    resolve_attn_implementation,
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
