"""Every method trains, saves its adapter and reloads to the logits it had, on a tiny model; the
ones peft cannot merge are served unmerged; AdaLoRA's rank schedule runs inside budgetlora's loop."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from budgetlora.config import METHODS, from_dict, load_config
from budgetlora.core.hub import load_tokenizer
from budgetlora.errors import ConfigError, ModelLoadError, UserError
from budgetlora.modeling import (
    TRAINED_PARAMETERS, add_lora, build_classifier, can_merge, is_quantized, load_trained, save_adapter,
    training_hooks,
)
from budgetlora.training.trainer import train

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# Small settings that still give every method something to train on a hidden-32 model.
OPTIONS = {
    "vera": {"vera_r": 16, "target_modules": "query,value,dense"},
    "fourierft": {"fourierft_n_frequency": 64, "fourierft_scaling": 10.0},
    "lokr": {"r": 2, "target_modules": "all-linear"},
    "loha": {"r": 2},
    "ia3": {"target_modules": "key,value,output.dense", "ia3_feedforward_modules": "output.dense"},
    "adalora": {"adalora_init_r": 4, "adalora_target_r": 2},
    "prompt": {"num_virtual_tokens": 4, "max_length": 64},  # the tiny roberta has 130 positions
}


def _run(model_dir, method: str, head: str = "default", **over):
    return from_dict({"model": str(model_dir), "method": method, "head": head, "r": 4, "lora_alpha": 8,
                      **OPTIONS.get(method, {}), **over}).validate()


def _batch():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]])
    return ids, (ids != 0).long()


def _train_a_few_steps(model, run, steps: int = 3) -> None:
    """Plain AdamW steps on a fixed batch (a large lr, so that every trained tensor moves away from
    its initial value), with the method's hooks as the loop runs them."""
    hooks = training_hooks(model, run, total_steps=steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.05)
    ids, mask = _batch()
    labels = torch.tensor([1, 2])
    model.train()
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
        if hooks.extra_loss is not None:
            loss = loss + hooks.extra_loss()
        loss.backward()
        opt.step()
        if hooks.after_optimizer_step is not None:
            hooks.after_optimizer_step(step)
        opt.zero_grad()
    model.eval()


def _logits(model) -> torch.Tensor:
    ids, mask = _batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


@pytest.mark.parametrize("head", ["default", "linear"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_saves_and_reloads_to_identical_logits(tmp_path, tiny_model_dir, method, head):
    run = _run(tiny_model_dir, method, head)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = add_lora(build_classifier(run.model, 4, LABELS), run)
        _train_a_few_steps(model, run)
    trained = _logits(model)
    save_adapter(model, load_tokenizer(str(tiny_model_dir)), run, LABELS, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "budgetlora.json").read_text())
    assert meta["method"] == method
    unmerged, _, _ = load_trained(tmp_path, merge=False)
    assert torch.allclose(_logits(unmerged), trained, atol=1e-6), method
    served, _, _ = load_trained(tmp_path)  # merged where the method allows it
    assert torch.allclose(_logits(served), trained, atol=1e-4), method
    merged = not hasattr(served, "peft_config")
    assert merged == can_merge(method)
    # the update really trained: the base model alone predicts something else
    base = build_classifier(run.model, 4, LABELS).eval()
    assert not torch.allclose(_logits(base), trained, atol=1e-4)


def test_bitfit_saves_only_what_trained(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    run = _run(tiny_model_dir, "bias")
    model = add_lora(build_classifier(run.model, 4, LABELS), run)
    save_adapter(model, None, run, LABELS, tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / TRAINED_PARAMETERS))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in saved)
    # a trained tensor the base does not have: a different model, said in one line
    from safetensors.torch import save_file

    save_file({**saved, "roberta.nonexistent.bias": torch.zeros(3)}, str(tmp_path / "adapter" / TRAINED_PARAMETERS))
    with pytest.raises(ModelLoadError, match="do not exist in the base model"):
        load_trained(tmp_path)


def test_operations_that_need_merged_weights_refuse_prompt_tuning(tmp_path, tiny_model_dir):
    run = _run(tiny_model_dir, "prompt")
    model = add_lora(build_classifier(run.model, 4, LABELS), run)
    save_adapter(model, load_tokenizer(str(tiny_model_dir)), run, LABELS, tmp_path / "adapter")
    with pytest.raises(UserError, match="cannot be merged") as err:
        load_trained(tmp_path, must_merge=True)
    assert "\n" not in str(err.value)
    merged, _, _ = load_trained(_saved_lora(tmp_path / "lora", tiny_model_dir), must_merge=True)
    assert not hasattr(merged, "peft_config")


def _saved_lora(folder, model_dir):
    run = _run(model_dir, "lora")
    save_adapter(add_lora(build_classifier(run.model, 4, LABELS), run), load_tokenizer(str(model_dir)), run, LABELS,
                 folder / "adapter")
    return folder


def test_adalora_prunes_ranks_inside_the_training_loop(tmp_path, tiny_model_dir, tiny_train_csv):
    """train() runs update_and_allocate after every optimizer step, so the final allocation
    happens and the saved adapter holds only the ranks left, which reload to the same logits."""
    cfg = load_config(None, {
        "model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "output_dir": str(tmp_path / "run"),
        "method": "adalora", "adalora_init_r": 6, "adalora_target_r": 2, "target_modules": "query,value",
        "max_steps": 6, "batch_size": 16, "eval_every": 6, "lr": 5e-3, "seed": 3,
    })
    metrics = train(cfg)
    assert metrics["budget_breakdown"]["adalora_E"] == 6 * 4  # 4 adapted modules at the initial rank
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    kept = [sum(mask) for mask in saved["rank_pattern"].values()]
    assert len(kept) == 4 and sum(kept) == 2 * 4  # target_r on average, as peft's budget schedule ends
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert sum(v.shape[0] for k, v in tensors.items() if "lora_E" in k) == 2 * 4
    model, _, _ = load_trained(tmp_path / "run", merge=False)
    assert model.peft_config["default"].rank_pattern


def test_adalora_needs_steps_to_prune(tiny_model_dir):
    run = _run(tiny_model_dir, "adalora", adalora_tinit=5, adalora_tfinal=5)
    model = add_lora(build_classifier(run.model, 4, LABELS), run)
    with pytest.raises(ConfigError, match="leave no step"):
        training_hooks(model, run, total_steps=10)


def test_prompt_tuning_run_is_served_by_predict(tmp_path, tiny_model_dir, tiny_train_csv, tiny_eval_csv):
    from budgetlora.inference.evaluate import evaluate_run

    cfg = load_config(None, {
        "model": str(tiny_model_dir), "train_file": str(tiny_train_csv), "output_dir": str(tmp_path / "run"),
        "method": "prompt", "num_virtual_tokens": 3, "max_length": 64, "head": "linear", "max_steps": 4,
        "batch_size": 16,
        "eval_every": 4, "lr": 1e-2,
    })
    train(cfg)
    report = evaluate_run(tmp_path / "run", str(tiny_eval_csv))
    assert 0.0 <= report["accuracy"] <= 1.0


@pytest.mark.parametrize("method", ["vera", "lora"])
def test_methods_refuse_settings_they_cannot_use(tiny_model_dir, method):
    if method == "vera":
        with pytest.raises(ConfigError, match="use_dora"):
            _run(tiny_model_dir, "vera", use_dora=True)
        with pytest.raises(ConfigError, match="rank_pattern"):
            _run(tiny_model_dir, "vera", rank_pattern={"query": 2})
    with pytest.raises(ConfigError, match="layers"):
        _run(tiny_model_dir, "ia3", layers=[1])
    with pytest.raises(ConfigError, match="bias"):
        _run(tiny_model_dir, "bias", bias="all")
    long_prompt = _run(tiny_model_dir, "prompt", max_length=125)  # + 4 tokens > the tiny roberta's 130 - 2
    with pytest.raises(ConfigError, match="exceed the 130 positions"):
        add_lora(build_classifier(long_prompt.model, 4, LABELS), long_prompt)
    with pytest.raises(ConfigError, match="cannot adapt bitsandbytes layers"):
        _run(tiny_model_dir, "lokr", quantize_base="4bit")
    with pytest.raises(ConfigError, match="must also be in --target-modules"):
        _run(tiny_model_dir, "ia3", target_modules="key,value", ia3_feedforward_modules="output.dense")


# ---------------------------------------------------------------------------------------------
# QLoRA: --quantize-base
# ---------------------------------------------------------------------------------------------


def test_quantization_config_is_nf4_double_quant_with_the_head_in_full_precision(monkeypatch):
    import sys
    import types

    from budgetlora.modeling import quantization_kwargs

    assert quantization_kwargs(None) == {}
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))  # only its presence counts
    kw = quantization_kwargs("4bit")
    q = kw["quantization_config"]
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16  # no GPU here
    assert "classifier" in q.llm_int8_skip_modules
    assert kw["device_map"] == {"": "cpu"}
    assert quantization_kwargs("8bit")["quantization_config"].load_in_8bit


def test_quantize_base_without_bitsandbytes_is_one_clear_line(monkeypatch, tiny_model_dir):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    run = _run(tiny_model_dir, "lora", quantize_base="4bit")
    with pytest.raises(ModelLoadError, match=r"pip install bitsandbytes") as err:
        build_classifier(run.model, 4, LABELS)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def bert64_dir(tmp_path_factory):
    """A tiny bert 64 features wide: bitsandbytes' CPU kernel fails to repack 32-wide 4-bit layers
    for inference ("shape '[32, 0]' is invalid"), 64 and more work."""
    from tiny import make_tokenizer
    from transformers import AutoModel, BertConfig

    folder = tmp_path_factory.mktemp("bert64")
    tok = make_tokenizer(folder)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_trains_and_reloads_on_a_quantized_base(tmp_path, bert64_dir, bits):
    """bitsandbytes (0.50 here) runs NF4 and int8 on a CPU: the frozen base is quantized, the adapter
    and head train in full precision, and the run is served on the same quantized base."""
    pytest.importorskip("bitsandbytes")
    tiny_bert_dir = bert64_dir
    run = _run(tiny_bert_dir, "lora", quantize_base=bits, target_modules="query,value")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = build_classifier(run.model, 4, LABELS)
        assert is_quantized(base)
        model = add_lora(base, run)
        _train_a_few_steps(model, run)
    trained = _logits(model)
    save_adapter(model, load_tokenizer(str(tiny_bert_dir)), run, LABELS, tmp_path / "adapter")
    served, _, meta = load_trained(tmp_path)
    assert meta["quantize_base"] == bits and is_quantized(served) and hasattr(served, "peft_config")
    assert torch.allclose(_logits(served), trained, atol=1e-5)


@pytest.mark.parametrize("method", ["vera", "bias", "prompt", "ia3"])
def test_optimizer_gives_the_method_lr_and_the_head_head_lr(tiny_model_dir, method):
    from budgetlora.config import TrainConfig
    from budgetlora.training.setup import param_groups

    run = _run(tiny_model_dir, method)
    model = add_lora(build_classifier(run.model, 4, LABELS), run)
    groups = param_groups(model, TrainConfig(lr=1e-2, head_lr=1e-3, weight_decay=0.1))
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_head = ".classifier." in f".{name}"
        assert lr_of[id(p)][0] == (1e-3 if in_head else 1e-2), name
        if "ia3_l" in name or name.endswith("bias"):
            assert lr_of[id(p)][1] == 0.0, name
