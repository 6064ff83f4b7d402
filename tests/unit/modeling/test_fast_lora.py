"""modeling.fast_lora: plain LoRA's forward in fewer passes gives peft's logits and gradients, only
`--method lora` gets it, and every case it does not cover (DoRA, a merged adapter) runs peft's
own forward."""

from __future__ import annotations

import copy

import pytest
import torch

from budgetlora.config import load_config
from budgetlora.modeling import build_model
from budgetlora.modeling.fast_lora import _FAST_BASE, use_fast_lora


def _pair(model_dir, **settings):
    cfg = load_config(None, {"model": str(model_dir), "head": "linear", "target_modules": "all-linear", "r": 4,
                             "lora_alpha": 12, **settings})
    torch.manual_seed(0)
    fast = build_model(cfg, 4)
    for name, p in fast.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters something to add
            torch.nn.init.normal_(p, std=0.05)
    peft_own = copy.deepcopy(fast)
    for module in peft_own.modules():
        if type(module) in _FAST_BASE:
            module.__class__ = _FAST_BASE[type(module)]
    return fast, peft_own


def _logits_and_grads(model, autocast: bool):
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]])
    model.train()
    model.zero_grad()
    torch.manual_seed(1)  # the head's dropout draws the same mask in both
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
    logits.float().square().sum().backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.float().detach(), grads


def test_add_lora_gives_every_plain_lora_linear_the_fast_forward(tiny_bert_dir):
    fast, peft_own = _pair(tiny_bert_dir)
    assert sum(type(m).__name__ == "FastLoraLinear" for m in fast.modules()) == 12  # 2 layers x 6 linear
    assert not any(type(m).__name__ == "FastLoraLinear" for m in peft_own.modules())
    assert use_fast_lora(peft_own) == 12


@pytest.mark.parametrize("autocast", [False, True])
def test_same_logits_and_gradients_as_peft(tiny_bert_dir, autocast):
    fast, peft_own = _pair(tiny_bert_dir)
    (a, ga), (b, gb) = _logits_and_grads(fast, autocast), _logits_and_grads(peft_own, autocast)
    # fp32: the same sums (alpha/r = 3 is applied inside the GEMM instead of after it); bf16: the
    # scaled sum is rounded once instead of three times
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, **tol)
    assert ga.keys() == gb.keys() and any("lora_A" in n for n in ga)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], **tol, msg=name)


@pytest.mark.parametrize("settings", [{"use_dora": True}, {"use_rslora": True}, {"method": "loha"},
                                      {"method": "adalora", "adalora_init_r": 4, "adalora_target_r": 2}])
def test_other_methods_keep_peft_layers(tiny_bert_dir, settings):
    fast, _ = _pair(tiny_bert_dir, **settings)
    assert not any(type(m).__name__ == "FastLoraLinear" for m in fast.modules())


def test_dora_and_merged_adapters_take_peft_forward(tiny_bert_dir):
    fast, peft_own = _pair(tiny_bert_dir, use_dora=True)
    assert use_fast_lora(fast) == 12  # given the class anyway, DoRA must still run peft's forward
    (a, ga), (b, gb) = _logits_and_grads(fast, False), _logits_and_grads(peft_own, False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    fast.eval()
    ids = torch.tensor([[2, 10, 11, 3]])
    with torch.no_grad():
        before = fast(input_ids=ids).logits
        for m in fast.modules():
            if type(m).__name__ == "FastLoraLinear":
                m.merge()
        after = fast(input_ids=ids).logits
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)
