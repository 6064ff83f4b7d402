"""Load a pretrained encoder, put a classification head on it and let peft insert LoRA.

Three heads:
- `default`: `AutoModelForSequenceClassification`, the architecture's own head. Its trainable part
  is every top-level module outside the pretrained encoder (roberta: `classifier`; distilbert:
  `pre_classifier` + `classifier`; deberta-v2: `pooler` + `classifier`), because those modules are
  freshly initialised and would stay random if frozen.
- `linear`: `EncoderClassifier` below, one linear layer on the first token (or the mean of the
  tokens). Same shape of module tree for every architecture.
- `native`: the `default` module tree with the head's hidden dense layer frozen and LoRA-adapted
  and only its output layer trained (`native_head.py`); merged, a plain transformers model.

The head is registered with peft as `modules_to_save`, so `save_pretrained` writes it into the
adapter folder and `PeftModel.from_pretrained` restores it: the notebooks' lost-head problem.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from budgetlora.config import LoraConfig, ModelConfig, RunConfig
from budgetlora.errors import ModelLoadError

log = logging.getLogger(__name__)

BUDGETLORA_META = "budgetlora.json"  # written into adapter/ so a run can be rebuilt from its folder


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

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        kwargs.pop("inputs_embeds", None)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
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


# ---------------------------------------------------------------------------------------------
# Resolving and loading the pretrained parts
# ---------------------------------------------------------------------------------------------


def _load_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {"trust_remote_code": cfg.trust_remote_code}


def _wrap_load_error(what: str, name: str, err: Exception) -> ModelLoadError:
    local = Path(name).expanduser()
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if local.exists():
        return ModelLoadError(f"{name}: cannot load the {what} from this folder ({text})")
    if "/" in name and (name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists()):
        return ModelLoadError(f"{name}: no such model folder")
    return ModelLoadError(
        f"{name}: cannot load the {what} from the Hugging Face Hub ({text}). If this machine is "
        "offline, pass a local model folder with --model (see `get_pretrained.sh` in the README)"
    )


def load_hf_config(cfg: ModelConfig, num_labels: Optional[int] = None, label_names: Optional[list[str]] = None):
    from transformers import AutoConfig

    kwargs = _load_kwargs(cfg)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    try:
        return AutoConfig.from_pretrained(cfg.model, **kwargs)
    except Exception as e:  # transformers raises OSError/ValueError/HF errors for the same cause
        raise _wrap_load_error("model config", cfg.model, e) from None


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


# Inside an encoder layer of a known architecture (the budget inventory's families):
# (the module whose output feeds the feed-forward block and its residual,
#  the self-attention module that calls transformers' attention interface with the projected
#  queries, keys and values). `attention` is self-attention + output projection + residual
# LayerNorm; DistilBERT's residual LayerNorm is `sa_layer_norm`. MPNet and DeBERTa-v2 add position
# biases in their own attention code, so they have no interface call to cut.
_LAST_LAYER_PARTS = {
    "bert": ("attention", "attention.self"),
    "mpnet": ("attention", None),
    "deberta-v2": ("attention", None),
    "distilbert": ("sa_layer_norm", "attention"),
}

# Registered with transformers' AttentionInterface; only the last layer's self-attention, given a
# config copy naming it, dispatches here (`first_token_last_layer`).
FIRST_QUERY_ATTENTION = "budgetlora_first_query"


def _first_query_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: Optional[torch.Tensor], **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The kernel the model was built with (`module._first_query_kernel`), for the first query only.

    Every key and value is still read, so the first token's output is what the full attention
    gives. The other positions get a copy of it, which `_first_token` cuts off after the output
    projection: the caller reshapes to its full [batch, tokens, hidden] shape before then.
    """
    if attention_mask is not None and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[..., :1, :]
    out, weights = module._first_query_kernel(module, query[:, :, :1], key, value, attention_mask, **kwargs)
    return out.expand(query.shape[0], query.shape[2], *out.shape[2:]), weights


def _first_query_last_layer(attn: nn.Module) -> bool:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = getattr(attn, "config", None)
    base = getattr(config, "_attn_implementation", None)
    own_eager = getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None)
    if base not in ("eager", "sdpa") or own_eager is None:
        return False  # e.g. flash attention, whose batch layout this slicing does not know
    AttentionInterface.register(FIRST_QUERY_ATTENTION, _first_query_attention)
    attn._first_query_kernel = ALL_ATTENTION_FUNCTIONS.get_interface(base, own_eager)
    # A copy, so that this module alone dispatches to it; the model's masks stay built for `base`.
    attn.config = copy.copy(config)
    attn.config._attn_implementation = FIRST_QUERY_ATTENTION
    return True


def _first_token(module: nn.Module, args: Any, output: Any) -> Any:
    # contiguous: the feed-forward matmuls on a strided slice were measured slower than on a copy
    if isinstance(output, tuple):
        return (output[0][:, :1].contiguous(), *output[1:])
    return output[:, :1].contiguous()


def first_token_last_layer(model: nn.Module) -> bool:
    """Cut the last encoder layer to the first token after its attention; True where installed.

    Only for heads that read nothing but the first token. The last layer's attention must still
    see every token (its keys and values), but its feed-forward block and everything after it
    work on each token alone, so running them on the first token gives the same logits for less
    work: 8 of the layer's 12 H^2 matmul FLOPs per token, 11% of a 6-layer model's, forward and
    backward. A forward hook rather than a patched forward: it survives peft wrapping and LoRA
    merging and needs no copy of the architectures' code.

    Where the layer's self-attention goes through transformers' attention interface (BERT-style
    and DistilBERT layers, eager or SDPA kernel), that attention also computes the first query
    alone (`_first_query_attention`): the layer's softmax(QK^T)V shrinks from tokens^2 to tokens
    per row.
    """
    from budgetlora.budget import ANALYTIC

    family = ANALYTIC.get(getattr(model.config, "model_type", None), (None, None))[1]
    if family is None:
        return False
    ffn_input, self_attention = _LAST_LAYER_PARTS[family]
    stacks = [m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] == "layer"]
    if len(stacks) != 1 or not len(stacks[0]) or not hasattr(stacks[0][-1], ffn_input):
        return False
    last = stacks[0][-1]
    getattr(last, ffn_input).register_forward_hook(_first_token)
    try:
        attn = last.get_submodule(self_attention) if self_attention is not None else None
    except AttributeError:  # a layer laid out otherwise: the feed-forward cut alone
        attn = None
    if attn is not None:
        _first_query_last_layer(attn)
    return True


def first_query_layers(model: nn.Module) -> int:
    """Layers whose attention `first_token_last_layer` computes for the first query alone (0 or 1).
    For FLOP counts."""
    return sum(getattr(getattr(m, "config", None), "_attn_implementation", None) == FIRST_QUERY_ATTENTION
               for m in model.modules())


def first_token_only_params(model: nn.Module) -> int:
    """Parameters that `first_token_last_layer` runs on each row's first token only (the last
    layer's modules after its attention); 0 where it is off. For FLOP counts."""
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if any(hook is _first_token for hook in module._forward_hooks.values()):
            layer_name, _, hooked = name.rpartition(".")
            return sum(p.numel() for child_name, child in modules[layer_name].named_children()
                       if child_name not in (hooked, "attention") for p in child.parameters())
    return 0


# Feed-forward blocks of the known families: (linear, the activation module applied to its output
# and to nothing else). BERT-style, MPNet and DeBERTa-v2 intermediates; DistilBERT's FFN.
_FFN_PAIRS = (("dense", "intermediate_act_fn"), ("lin1", "activation"))


def _fusable_activation(act: nn.Module) -> Optional[tuple[str, str]]:
    """oneDNN's (post-op, algorithm) computing the same function as `act`, or None."""
    from transformers.activations import GELUActivation, GELUTanh

    fn = getattr(act, "act", None)
    if isinstance(act, nn.GELU):
        return "gelu", act.approximate
    if type(act) is GELUActivation and fn is nn.functional.gelu:
        return "gelu", "none"
    if type(act) is GELUTanh and isinstance(fn, functools.partial) and fn.func is nn.functional.gelu \
            and fn.keywords == {"approximate": "tanh"}:
        return "gelu", "tanh"
    return None


def packed_linear_available() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class PackedLinear(nn.Module):
    """Inference-only stand-in for a frozen `nn.Linear` in bf16 on a CPU: oneDNN's matmul on a
    weight reordered once into the kernel's blocked layout, with the bias, and the activation that
    follows the layer where `activation` names one, applied inside the kernel.

    `nn.Linear` in bf16 runs on the weight's plain layout and writes the bias into its output in a
    pass of its own (a copy the size of the output: 7% of the prediction loop in the profile), and
    the activation then reads and writes the output once more. The packed weight is oneDNN's opaque
    tensor: not a Parameter, not in the state dict, not moved or cast by `.to()`; so this is for a
    merged model that is only run, never trained or saved.
    """

    def __init__(self, linear: nn.Linear, activation: tuple[str, str] = ("none", ""), rows_hint: int = 4096):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.post_op, self.algorithm = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, self.post_op, [], self.algorithm)

    def __deepcopy__(self, memo: dict) -> "PackedLinear":
        # oneDNN's opaque tensor has no storage to copy: repack a dense copy of the weight (into a
        # layer left uninitialised, since every value is overwritten)
        dense = torch.nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                                         device="cpu", dtype=torch.bfloat16)
        with torch.no_grad():
            dense.weight.copy_(self.packed_weight.to_dense())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return PackedLinear(dense, (self.post_op, self.algorithm))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, post_op={self.post_op}"


def pack_linear_layers(model: nn.Module) -> int:
    """Swap every `nn.Linear` of a frozen bf16 CPU model for a `PackedLinear`, fusing the
    feed-forward activation where the family's layout and the activation allow; returns how many
    were swapped (0 where oneDNN's ops are missing or the model is not bf16 on a CPU).

    Same function up to bf16 rounding: the fused kernel adds the bias and applies the activation
    to the fp32 accumulator and rounds once, where the plain path rounds after the matmul and again
    after the activation.
    """
    params = list(model.parameters())
    if not packed_linear_available() or not params or any(
        p.device.type != "cpu" or p.dtype != torch.bfloat16 for p in params
    ):
        return 0
    fused: dict[int, tuple[str, str]] = {}
    for module in model.modules():
        for linear_name, act_name in _FFN_PAIRS:
            linear, act = getattr(module, linear_name, None), getattr(module, act_name, None)
            post_op = _fusable_activation(act) if isinstance(act, nn.Module) else None
            if type(linear) is nn.Linear and post_op is not None:
                fused[id(linear)] = post_op
                setattr(module, act_name, nn.Identity())
    swapped = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, PackedLinear(child, fused.get(id(child), ("none", ""))))
                swapped += 1
    return swapped


def resolve_attn_implementation(name: str) -> str:
    """'auto': SDPA's fused kernels on a GPU; on a CPU plain matmul + softmax ('eager'), which
    trained 1.3x faster than SDPA in bf16 here (docs/BENCHMARKS.md)."""
    if name != "auto":
        return name
    return "sdpa" if torch.cuda.is_available() else "eager"


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise _wrap_load_error("tokenizer", name_or_path, e) from None


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
    )
    _quiet_transformers()
    try:
        return _with_attn_fallback(
            lambda **kw: _make(cfg, num_labels, lambda cls, **k: cls.from_pretrained(cfg.model, **k), **kw), kwargs
        )
    except ModelLoadError:
        raise
    except Exception as e:
        raise _wrap_load_error("model weights", cfg.model, e) from None


def build_classifier_from_config(cfg: ModelConfig, hf_config) -> nn.Module:
    """The same module tree as `build_classifier`, randomly initialised (tests, meta counting)."""
    _quiet_transformers()
    kwargs = {"attn_implementation": cfg.attn_implementation}
    return _with_attn_fallback(
        lambda **kw: _make(cfg, hf_config.num_labels, lambda cls, **k: cls.from_config(hf_config, **k), **kw), kwargs
    )


def _make(cfg: ModelConfig, num_labels: int, construct, **kwargs) -> nn.Module:
    from transformers import AutoModel, AutoModelForSequenceClassification

    if cfg.head in ("default", "native"):
        model = construct(AutoModelForSequenceClassification, **kwargs)
        if cfg.head == "native":
            from budgetlora.modeling.native_head import init_native_head

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


# ---------------------------------------------------------------------------------------------
# LoRA through peft
# ---------------------------------------------------------------------------------------------


def peft_lora_config(lora: LoraConfig, head_modules: list[str], head: str):
    """Translate our LoraConfig into peft's. The head goes in `modules_to_save`."""
    import peft

    target = lora.target_modules
    if isinstance(target, list):
        target = list(target)
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=target,
        layers_to_transform=list(lora.layers) if lora.layers else None,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        init_lora_weights=lora.peft_init,
        rank_pattern=dict(lora.rank_pattern),
        alpha_pattern=dict(lora.alpha_pattern),
        modules_to_save=list(head_modules) + list(lora.modules_to_train),
        # SEQ_CLS gives users the standard PeftModelForSequenceClassification for the default head.
        task_type=peft.TaskType.SEQ_CLS if head == "default" else None,
    )


def add_lora(model: nn.Module, run: RunConfig):
    import peft

    from budgetlora.config import model_num_layers, resolve_relative_layers

    run = resolve_relative_layers(run, model_num_layers(model.config))  # --layers-relative-to
    heads, lora = head_module_names(model), run.lora
    if run.model.head == "native":  # the output layer trains whole, the hidden dense gets LoRA
        from budgetlora.modeling.native_head import native_head, native_targets

        spec = native_head(getattr(model.config, "model_type", None))
        heads, lora = [spec.output], dataclasses.replace(lora, target_modules=native_targets(lora.target_modules, spec))
    try:
        pcfg = peft_lora_config(lora, heads, run.model.head)
        return peft.get_peft_model(model, pcfg)
    except (ValueError, TypeError) as e:
        # peft says "Target modules ... not found in the base model" for a typo in target_modules.
        from budgetlora.errors import ConfigError

        raise ConfigError(f"target_modules/layers: {str(e).splitlines()[0]}") from None


def build_model(run: RunConfig, num_labels: int, label_names: Optional[list[str]] = None):
    """Pretrained encoder + head + LoRA, ready to train."""
    base = build_classifier(run.model, num_labels, label_names)
    return add_lora(base, run)


# ---------------------------------------------------------------------------------------------
# Saving and loading a trained run
# ---------------------------------------------------------------------------------------------


def save_adapter(model, tokenizer, run: RunConfig, label_names: list[str], out_dir: Path) -> None:
    """adapter/: peft weights (LoRA + head), tokenizer and what is needed to rebuild the base.

    Written into a temporary folder that then replaces `out_dir`, so a run killed while saving
    never leaves half an adapter (a resumed run replays the evaluation and writes it again).
    """
    final = Path(out_dir)
    for stale in list(final.parent.glob(f".tmp-{final.name}-*")) + list(final.parent.glob(f".old-{final.name}-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while saving
    out_dir = final.parent / f".tmp-{final.name}-{os.getpid()}"
    out_dir.mkdir(parents=True)
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    meta = {
        "base_model": run.model.model,
        "head": run.model.head,
        "pooling": run.model.pooling,
        "num_labels": len(label_names),
        "label_names": list(label_names),
        "max_length": run.data.max_length,
    }
    (out_dir / BUDGETLORA_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(out_dir, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(out_dir, final)


def read_adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / BUDGETLORA_META
    if not path.is_file():
        raise ModelLoadError(f"{adapter_dir}: not a budgetlora adapter folder ({BUDGETLORA_META} is missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_trained(
    run_dir: Path, model: Optional[str] = None, settings: Optional[ModelConfig] = None, merge: bool = True
):
    """(model in eval mode, tokenizer, adapter meta) from a finished run folder.

    Head and pooling come from the adapter. `model` overrides where the base model is loaded from
    (the run may have been trained where the base lived in another folder); `settings` carries the
    run's loading options (attention kernel, remote code, pickle weights).
    """
    import dataclasses

    import peft

    adapter_dir = Path(run_dir) / "adapter"
    if not adapter_dir.is_dir():
        raise ModelLoadError(f"{run_dir}: no adapter/ folder; is this a finished budgetlora run?")
    meta = read_adapter_meta(adapter_dir)
    mcfg = dataclasses.replace(
        settings or ModelConfig(), model=model or meta["base_model"], head=meta["head"],
        pooling=meta.get("pooling", "first"),
    )
    base = build_classifier(mcfg, meta["num_labels"], meta["label_names"])
    trained = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    if merge:
        # Merged weights: inference runs at the plain encoder's speed, no LoRA side branches.
        trained = trained.merge_and_unload()
    trained.eval()
    tokenizer = load_tokenizer(str(adapter_dir))
    check_tokenizer_matches(tokenizer, base.config, str(adapter_dir))
    return trained, tokenizer, meta


def _quiet_transformers() -> None:
    """Hide the expected 'newly initialized head' warnings; our own log says what trains."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
