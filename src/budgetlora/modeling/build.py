"""Load a pretrained encoder, put a classification head on it and let peft insert LoRA.

Two heads:
- `default`: `AutoModelForSequenceClassification`, the architecture's own head. Its trainable part
  is every top-level module outside the pretrained encoder (roberta: `classifier`; distilbert:
  `pre_classifier` + `classifier`; deberta-v2: `pooler` + `classifier`), because those modules are
  freshly initialised and would stay random if frozen.
- `linear`: `EncoderClassifier` below, one linear layer on the first token (or the mean of the
  tokens). Same shape of module tree for every architecture.

The head is registered with peft as `modules_to_save`, so `save_pretrained` writes it into the
adapter folder and `PeftModel.from_pretrained` restores it: the notebooks' lost-head problem.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from budgetlora.config import ModelConfig, RunConfig, model_num_layers, resolve_relative_layers, resolved_method
from budgetlora.core.hub import load_hf_config, quiet_transformers, wrap_load_error
from budgetlora.errors import ConfigError, ModelLoadError
from budgetlora.modeling.fast_lora import use_fast_lora
from budgetlora.modeling.fast_paths import first_token_last_layer, resolve_attn_implementation
from budgetlora.modeling.head_specs import native_head, native_targets
from budgetlora.modeling.native_head import init_native_head
from budgetlora.modeling.methods import attach_method

log = logging.getLogger(__name__)


class EncoderClassifier(nn.Module):
    """A pretrained encoder with one linear layer on the first token (or mean of tokens)."""

    base_model_prefix = "encoder"

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "first"):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config  # peft and transformers utilities look for `.config`
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        p = getattr(encoder.config, "classifier_dropout", None)
        if p is None:
            p = getattr(encoder.config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(hidden, num_labels)
        nn.init.normal_(self.classifier.weight, std=getattr(encoder.config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)

    @property
    def device(self) -> torch.device:  # peft's prompt learning asks the wrapped model for it
        return self.classifier.weight.device

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,  # prompt tuning passes embeddings instead of ids
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              inputs_embeds=inputs_embeds).last_hidden_state
        if self.pooling == "mean" and attention_mask is not None:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _load_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {"trust_remote_code": cfg.trust_remote_code}


def set_encoder_dropout(model: nn.Module, p: Optional[float]) -> None:
    """Set every dropout inside the pretrained encoder to `p` (None: leave the pretrained values).

    Done on the built modules rather than the config because heads read the config's dropout too
    (MPNet's head uses `hidden_dropout_prob`): the head keeps its own dropout. Attention dropout is
    an `nn.Dropout` in most architectures and a float `dropout_prob` in BERT-style ones.
    """
    if p is None:
        return
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = float(p)
        if isinstance(getattr(module, "dropout_prob", None), float):
            module.dropout_prob = float(p)


def check_tokenizer_matches(tokenizer, hf_config, name: str) -> None:
    """A tokenizer with more tokens than the model has embedding rows belongs to another model:
    its ids would index past the embedding matrix (an IndexError deep in the forward pass)."""
    vocab = getattr(hf_config, "vocab_size", None)
    n = len(tokenizer)
    if isinstance(vocab, int) and vocab > 0 and n > vocab:
        raise ModelLoadError(
            f"{name}: the tokenizer has {n:,} tokens but the model's vocabulary has {vocab:,} "
            "(config.json vocab_size); the tokenizer does not belong to this model, so put the "
            "model's own tokenizer files in the folder"
        )


def _check_weights_present(cfg: ModelConfig) -> None:
    """Refuse pickle-only weights early: a clear message beats a transformers stack trace."""
    folder = Path(cfg.model).expanduser()
    if not folder.is_dir():
        return
    safes = list(folder.glob("*.safetensors")) + list(folder.glob("*.safetensors.index.json"))
    pickles = list(folder.glob("pytorch_model*.bin"))
    if not safes and not pickles:
        raise ModelLoadError(f"{cfg.model}: the folder has no model weights (model.safetensors)")
    if not safes and not cfg.allow_pickle_weights:
        raise ModelLoadError(
            f"{cfg.model}: only pickle weights (pytorch_model.bin) found; convert them to safetensors "
            "or pass --allow-pickle-weights if you trust their source"
        )


def build_classifier(
    cfg: ModelConfig, num_labels: int, label_names: Optional[list[str]] = None, hf_config=None
) -> nn.Module:
    """The pretrained encoder with a freshly initialised head, all in fp32 (master weights)."""

    hf_config = hf_config or load_hf_config(cfg, num_labels, label_names)
    _check_weights_present(cfg)
    kwargs = dict(
        config=hf_config,
        attn_implementation=cfg.attn_implementation,
        use_safetensors=None if cfg.allow_pickle_weights else True,
        dtype=torch.float32,
        **_load_kwargs(cfg),
        **quantization_kwargs(cfg.quantize_base),
    )
    quiet_transformers()
    try:
        return _with_attn_fallback(
            lambda **kw: _make(cfg, num_labels, lambda cls, **k: cls.from_pretrained(cfg.model, **k), **kw), kwargs
        )
    except ModelLoadError:
        raise
    except Exception as e:
        raise wrap_load_error("model weights", cfg.model, e) from None


# Head modules of every family (and bert's pooler, which feeds its head): kept in full precision
# by a quantized load, as they train or are freshly initialised.
_NOT_QUANTIZED = ["classifier", "pre_classifier", "pooler", "score"]


def quantization_kwargs(bits: Optional[str]) -> dict[str, Any]:
    """from_pretrained arguments that quantize the frozen encoder with bitsandbytes (QLoRA): NF4
    with double quantization and bf16 compute (fp16 on a GPU without bf16), or LLM.int8()."""
    if bits is None:
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"quantize_base {bits}: needs bitsandbytes (pip install bitsandbytes), "
                             "or drop --quantize-base to train on the full-precision base") from None
    from transformers import BitsAndBytesConfig

    gpu = torch.cuda.is_available()
    compute = torch.bfloat16 if not gpu or torch.cuda.is_bf16_supported() else torch.float16
    config = BitsAndBytesConfig(
        load_in_4bit=bits == "4bit", load_in_8bit=bits == "8bit", bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=list(_NOT_QUANTIZED),
    )
    # bitsandbytes quantizes while loading onto the device the model will train on
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device() if gpu else "cpu"}}


def is_quantized(model: nn.Module) -> bool:
    """Whether bitsandbytes holds some of the model's weights (a --quantize-base run)."""
    return any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def build_classifier_from_config(cfg: ModelConfig, hf_config) -> nn.Module:
    """The same module tree as `build_classifier`, randomly initialised (tests, meta counting)."""
    quiet_transformers()
    kwargs = {"attn_implementation": cfg.attn_implementation}
    return _with_attn_fallback(
        lambda **kw: _make(cfg, hf_config.num_labels, lambda cls, **k: cls.from_config(hf_config, **k), **kw), kwargs
    )


def _make(cfg: ModelConfig, num_labels: int, construct, **kwargs) -> nn.Module:
    from transformers import AutoModel, AutoModelForSequenceClassification

    if cfg.head in ("default", "native"):
        model = construct(AutoModelForSequenceClassification, **kwargs)
        if cfg.head == "native":
            init_native_head(model)
    else:
        try:
            encoder = construct(AutoModel, add_pooling_layer=False, **kwargs)
        except TypeError:  # architectures without a pooler do not take the argument
            encoder = construct(AutoModel, **kwargs)
        model = EncoderClassifier(encoder, num_labels, cfg.pooling)
    set_encoder_dropout(model, cfg.encoder_dropout)
    if cfg.first_token_last_layer and (cfg.head != "linear" or cfg.pooling == "first"):
        first_token_last_layer(model)
    return model


def _with_attn_fallback(make, kwargs: dict[str, Any]) -> nn.Module:
    """Build with the resolved attention kernel; some architectures (mpnet) have no SDPA kernel:
    fall back to eager attention and say so."""
    kwargs = {**kwargs, "attn_implementation": resolve_attn_implementation(kwargs["attn_implementation"])}
    try:
        return make(**kwargs)
    except ValueError as e:
        if "attention implementation" not in str(e) or kwargs.get("attn_implementation") == "eager":
            raise
        log.warning("this architecture does not support %s attention; using eager", kwargs["attn_implementation"])
        return make(**{**kwargs, "attn_implementation": "eager"})


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level modules with parameters outside the pretrained encoder: the head to train."""
    prefix = getattr(model, "base_model_prefix", None)
    return [
        name
        for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    ]


def add_lora(model: nn.Module, run: RunConfig):
    """The run's parameter-efficient method (`--method`: LoRA or another, modeling.methods) on a
    built classifier, the head trained whole."""
    run = resolve_relative_layers(run, model_num_layers(model.config))  # --layers-relative-to
    heads, lora = head_module_names(model), run.lora
    if run.model.head == "native":  # the output layer trains whole, the hidden dense gets LoRA
        spec = native_head(getattr(model.config, "model_type", None))
        heads, lora = [spec.output], dataclasses.replace(lora, target_modules=native_targets(lora.target_modules, spec))
    try:
        if lora is not run.lora:
            run = copy.deepcopy(run)
            run.lora = lora
        adapted = attach_method(model, run, heads)
    except (ValueError, TypeError) as e:
        # peft says "Target modules ... not found in the base model" for a typo in target_modules.
        raise ConfigError(f"target_modules/layers: {str(e).splitlines()[0]}") from None
    if resolved_method(run) == "lora":  # plain LoRA's forward in fewer passes; other methods keep peft's
        use_fast_lora(adapted)
    return adapted


def build_model(run: RunConfig, num_labels: int, label_names: Optional[list[str]] = None):
    """Pretrained encoder + head + LoRA, ready to train."""
    base = build_classifier(run.model, num_labels, label_names)
    return add_lora(base, run)


def build_on_meta(hf_config: Any, num_labels: int, settings: ModelConfig, run: Optional[RunConfig] = None) -> nn.Module:
    """The classifier, with LoRA where `run` is given, built on the meta device: every module and
    shape, no memory and no weights. For counting, and for reading the module tree of an
    architecture no family record describes."""
    cfg = copy.deepcopy(hf_config)
    cfg.num_labels = num_labels
    # peft and transformers warn about things that only matter for training a real model
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = build_classifier_from_config(settings, cfg)
        return add_lora(model, run) if run is not None else model
