"""Trainable-parameter counts: the one source of truth for the budget.

Two ways to count, which must agree to the parameter:

- `count_trainable(model)` measures a built (peft-wrapped) model: every parameter with
  `requires_grad`, classified by name. It equals `peft_model.get_nb_trainable_parameters()[0]`.
- `estimate(run, hf_config, num_labels)` predicts the same number from the model config alone,
  without building a model or importing peft, so that `train` can refuse an
  over-budget run before downloading anything and `plan` can price hundreds of candidates in
  well under a second. It lists the modules the architecture builds (`module_inventory`) and
  replays peft 0.21's rules on their names (`analyse`): which modules get LoRA, which are
  wrapped by `modules_to_save`, which biases train. Architectures or settings it does not
  model exactly fall back to building the model on the `meta` device and counting it.

The budget covers everything that trains: LoRA A and B matrices, DoRA magnitude vectors, the
classification head (a full trainable copy kept by peft's `modules_to_save`), trainable biases
and any extra `modules_to_train`. It is a strict upper bound: a run must have *fewer* trainable
parameters than the budget.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from budgetlora.config import RunConfig
from budgetlora.errors import BudgetError, ConfigError, ModelLoadError
from budgetlora.core.heads import native_head, native_targets

if TYPE_CHECKING:  # torch is imported lazily: `plan` must start fast
    import torch

# Display order: adapters first, then what trains besides them.
KINDS = ("lora_A", "lora_B", "dora_magnitude", "head", "bias", "other")


@dataclass
class Breakdown:
    """Trainable parameters by kind. `other` is everything besides adapters, head and biases,
    in practice the full copies of `modules_to_train` (e.g. LayerNorms)."""

    lora_A: int = 0
    lora_B: int = 0
    head: int = 0
    bias: int = 0
    dora_magnitude: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in KINDS)

    def as_dict(self) -> dict[str, int]:
        d = {k: getattr(self, k) for k in KINDS}
        d["total"] = self.total
        return d

    def describe(self) -> str:
        parts = [f"{k} {getattr(self, k):,}" for k in KINDS if getattr(self, k)]
        return " · ".join(parts or ["nothing trainable"]) + f" = {self.total:,}"


# ---------------------------------------------------------------------------------------------
# Measuring a built model
# ---------------------------------------------------------------------------------------------


def count_trainable(model: "torch.nn.Module") -> Breakdown:
    """Trainable parameters of a built model, by kind.

    Counts what `requires_grad` says, once per tensor (like `named_parameters()` and peft's own
    `get_nb_trainable_parameters`). peft's `modules_to_save` keeps the frozen original of the head
    next to its trainable copy; only the copy has `requires_grad`, so the head counts once.
    """
    from budgetlora.modeling import head_module_names

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    heads = set(head_module_names(base))
    out = Breakdown()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        rel = name.removeprefix("base_model.model.")
        parts = rel.split(".")
        if "lora_A" in parts or "lora_embedding_A" in parts:
            out.lora_A += n
        elif "lora_B" in parts or "lora_embedding_B" in parts:
            out.lora_B += n
        elif "lora_magnitude_vector" in parts:
            out.dora_magnitude += n
        elif parts[0] in heads and "base_layer" not in parts:  # native: the adapted dense's bias is a bias
            out.head += n
        elif "modules_to_save" in parts:
            out.other += n
        elif parts[-1] == "bias":
            out.bias += n
        else:
            out.other += n
    return out


# ---------------------------------------------------------------------------------------------
# The module inventory: what an architecture builds, from its config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    """One leaf module with parameters, as `build_classifier_from_config` would create it."""

    name: str
    kind: str  # "linear", "embedding", "norm", "conv", "other", or "none" (dropout, activation)
    in_features: int
    out_features: int
    weight: int  # parameters other than the bias
    bias: int  # size of the bias, 0 when there is none

    @property
    def params(self) -> int:
        return self.weight + self.bias


def _linear(name: str, i: int, o: int, bias: bool = True) -> Module:
    return Module(name, "linear", i, o, i * o, o if bias else 0)


def _embedding(name: str, n: int, d: int) -> Module:
    return Module(name, "embedding", n, d, n * d, 0)


def _norm(name: str, d: int) -> Module:
    return Module(name, "norm", d, d, d, d)


def _none(name: str) -> Module:
    # Modules without parameters still matter: a target that matches one makes peft refuse.
    return Module(name, "none", 0, 0, 0, 0)


# peft's layer index: the first number that follows a dotted name segment ("....layer.3.")
_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


@dataclass
class Inventory:
    """The leaf modules of one architecture + head, and the names derived from them."""

    model_type: str
    head: str  # "default" | "linear"
    modules: list[Module]
    head_names: list[str]  # top-level modules that make the head (model.head_module_names)
    num_layers: int
    hidden_size: int
    # Block-relative names of the linear modules that play each role (plan uses them).
    roles: dict[str, list[str]] = field(default_factory=dict)
    exact: bool = True  # False: built from a module tree nobody checked against peft (unknown arch)

    def __post_init__(self) -> None:
        self.by_name = {m.name: m for m in self.modules}
        keys: dict[str, None] = {}
        for m in self.modules:
            parts = m.name.split(".")
            for i in range(1, len(parts) + 1):
                keys.setdefault(".".join(parts[:i]), None)
        self.keys = list(keys)  # every module name, parents included
        self.layer_of: dict[str, Optional[int]] = {}
        for k in self.keys:
            match = _LAYER_INDEX.match(k)
            self.layer_of[k] = int(match.group("idx")) if match else None
        self.block_prefix = self._block_prefix()

    def _block_prefix(self) -> Optional[str]:
        for k in self.keys:
            if self.layer_of[k] == 0:
                match = re.match(r"(?P<p>.*?\.[^.]*)\.0\.", k)
                if match:
                    return match.group("p")
        return None

    def block_relative(self, layer: int = 0) -> list[str]:
        """Names inside one encoder block, relative to it ('attention.self.query', ...)."""
        if self.block_prefix is None:
            return []
        start = f"{self.block_prefix}.{layer}."
        return [k[len(start):] for k in self.keys if k.startswith(start)]


def _bert_block_tail(b: str, h: int, inter: int) -> list[Module]:
    """A BERT-style layer after its q/k/v projections: attention output, feed-forward, norms."""
    return [
        _none(f"{b}.attention.self.dropout"),
        _linear(f"{b}.attention.output.dense", h, h),
        _norm(f"{b}.attention.output.LayerNorm", h),
        _none(f"{b}.attention.output.dropout"),
        _linear(f"{b}.intermediate.dense", h, inter),
        _none(f"{b}.intermediate.intermediate_act_fn"),
        _linear(f"{b}.output.dense", inter, h),
        _norm(f"{b}.output.LayerNorm", h),
        _none(f"{b}.output.dropout"),
    ]


def _block_dims(cfg: Any) -> tuple[int, int, int, int]:
    """(hidden, heads, attention width = heads x head size, feed-forward width) of a BERT-style block."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    return h, heads, heads * int(h / heads), cfg.intermediate_size


def _bert_like(cfg: Any, p: str, *, pooler: bool, embedding_size: Optional[int] = None) -> list[Module]:
    """bert, roberta, xlm-roberta, camembert, electra: same block, different embeddings."""
    h, heads, a, inter = _block_dims(cfg)
    e = embedding_size or h
    mods = [
        _embedding(f"{p}.embeddings.word_embeddings", cfg.vocab_size, e),
        _embedding(f"{p}.embeddings.position_embeddings", cfg.max_position_embeddings, e),
        _embedding(f"{p}.embeddings.token_type_embeddings", cfg.type_vocab_size, e),
        _norm(f"{p}.embeddings.LayerNorm", e),
        _none(f"{p}.embeddings.dropout"),
    ]
    if e != h:
        mods.append(_linear(f"{p}.embeddings_project", e, h))
    for i in range(cfg.num_hidden_layers):
        b = f"{p}.encoder.layer.{i}"
        mods += [
            _linear(f"{b}.attention.self.query", h, a),
            _linear(f"{b}.attention.self.key", h, a),
            _linear(f"{b}.attention.self.value", h, a),
            *_bert_block_tail(b, h, inter),
        ]
    if pooler:
        mods += [_linear(f"{p}.pooler.dense", h, h), _none(f"{p}.pooler.activation")]
    return mods


def _mpnet(cfg: Any, p: str) -> list[Module]:
    h, heads, a, inter = _block_dims(cfg)
    mods = [
        _embedding(f"{p}.embeddings.word_embeddings", cfg.vocab_size, h),
        _embedding(f"{p}.embeddings.position_embeddings", cfg.max_position_embeddings, h),
        _norm(f"{p}.embeddings.LayerNorm", h),
        _none(f"{p}.embeddings.dropout"),
    ]
    for i in range(cfg.num_hidden_layers):
        b = f"{p}.encoder.layer.{i}"
        mods += [
            _linear(f"{b}.attention.attn.q", h, a),
            _linear(f"{b}.attention.attn.k", h, a),
            _linear(f"{b}.attention.attn.v", h, a),
            _linear(f"{b}.attention.attn.o", h, h),
            _none(f"{b}.attention.attn.dropout"),
            _norm(f"{b}.attention.LayerNorm", h),
            _none(f"{b}.attention.dropout"),
            _linear(f"{b}.intermediate.dense", h, inter),
            _none(f"{b}.intermediate.intermediate_act_fn"),
            _linear(f"{b}.output.dense", inter, h),
            _norm(f"{b}.output.LayerNorm", h),
            _none(f"{b}.output.dropout"),
        ]
    mods.append(_embedding(f"{p}.encoder.relative_attention_bias", cfg.relative_attention_num_buckets, heads))
    return mods


def _distilbert(cfg: Any, p: str) -> list[Module]:
    d = cfg.dim
    mods = [
        _embedding(f"{p}.embeddings.word_embeddings", cfg.vocab_size, d),
        _embedding(f"{p}.embeddings.position_embeddings", cfg.max_position_embeddings, d),
        _norm(f"{p}.embeddings.LayerNorm", d),
        _none(f"{p}.embeddings.dropout"),
    ]
    for i in range(cfg.n_layers):
        b = f"{p}.transformer.layer.{i}"
        mods += [
            _none(f"{b}.attention.dropout"),
            _linear(f"{b}.attention.q_lin", d, d),
            _linear(f"{b}.attention.k_lin", d, d),
            _linear(f"{b}.attention.v_lin", d, d),
            _linear(f"{b}.attention.out_lin", d, d),
            _norm(f"{b}.sa_layer_norm", d),
            _none(f"{b}.ffn.dropout"),
            _linear(f"{b}.ffn.lin1", d, cfg.hidden_dim),
            _linear(f"{b}.ffn.lin2", cfg.hidden_dim, d),
            _none(f"{b}.ffn.activation"),
            _norm(f"{b}.output_layer_norm", d),
        ]
    return mods


def _deberta_v2(cfg: Any, p: str) -> list[Module]:
    h = cfg.hidden_size
    e = getattr(cfg, "embedding_size", None) or h
    heads = cfg.num_attention_heads
    a = heads * getattr(cfg, "attention_head_size", h // heads)
    inter = cfg.intermediate_size
    mods = [_embedding(f"{p}.embeddings.word_embeddings", cfg.vocab_size, e)]
    if getattr(cfg, "position_biased_input", True):
        mods.append(_embedding(f"{p}.embeddings.position_embeddings", cfg.max_position_embeddings, e))
    if cfg.type_vocab_size > 0:
        mods.append(_embedding(f"{p}.embeddings.token_type_embeddings", cfg.type_vocab_size, e))
    if e != h:
        mods.append(_linear(f"{p}.embeddings.embed_proj", e, h, bias=False))
    mods += [_norm(f"{p}.embeddings.LayerNorm", h), _none(f"{p}.embeddings.dropout")]
    relative = getattr(cfg, "relative_attention", False)
    pos_types = cfg.pos_att_type if cfg.pos_att_type is not None else []
    separate_pos = relative and not getattr(cfg, "share_att_key", False)
    for i in range(cfg.num_hidden_layers):
        b = f"{p}.encoder.layer.{i}"
        mods += [
            _linear(f"{b}.attention.self.query_proj", h, a),
            _linear(f"{b}.attention.self.key_proj", h, a),
            _linear(f"{b}.attention.self.value_proj", h, a),
        ]
        if relative:
            mods.append(_none(f"{b}.attention.self.pos_dropout"))
        if separate_pos and "c2p" in pos_types:
            mods.append(_linear(f"{b}.attention.self.pos_key_proj", h, a))
        if separate_pos and "p2c" in pos_types:
            mods.append(_linear(f"{b}.attention.self.pos_query_proj", h, a))
        mods += _bert_block_tail(b, h, inter)
    if relative:
        max_rel = getattr(cfg, "max_relative_positions", -1)
        if max_rel < 1:
            max_rel = cfg.max_position_embeddings
        buckets = getattr(cfg, "position_buckets", -1)
        mods.append(_embedding(f"{p}.encoder.rel_embeddings", 2 * (buckets if buckets > 0 else max_rel), h))
    if "layer_norm" in [x.strip() for x in getattr(cfg, "norm_rel_ebd", "none").lower().split("|")]:
        mods.append(_norm(f"{p}.encoder.LayerNorm", h))
    kernel = getattr(cfg, "conv_kernel_size", 0)
    if kernel > 0:
        groups = getattr(cfg, "conv_groups", 1)
        mods.append(Module(f"{p}.encoder.conv.conv", "conv", h, h, h * (h // groups) * kernel, h))
        mods += [_norm(f"{p}.encoder.conv.LayerNorm", h), _none(f"{p}.encoder.conv.dropout")]
    return mods


_BERT_ROLES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "o": "attention.output.dense",
}
_ROLE_NAMES = {
    "bert": _BERT_ROLES,
    "mpnet": {"q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
              "o": "attention.attn.o"},
    "distilbert": {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
                   "o": "attention.out_lin"},
    "deberta-v2": {"q": "attention.self.query_proj", "k": "attention.self.key_proj",
                   "v": "attention.self.value_proj", "o": "attention.output.dense"},
}

# model_type -> (base_model_prefix of the ...ForSequenceClassification class, role family)
ANALYTIC = {
    "roberta": ("roberta", "bert"),
    "xlm-roberta": ("roberta", "bert"),
    "camembert": ("roberta", "bert"),
    "bert": ("bert", "bert"),
    "electra": ("electra", "bert"),
    "mpnet": ("mpnet", "mpnet"),
    "distilbert": ("distilbert", "distilbert"),
    "deberta-v2": ("deberta", "deberta-v2"),
}


def module_inventory(hf_config: Any, head: str, num_labels: int) -> Optional[Inventory]:
    """The leaf modules `build_classifier_from_config` builds, computed from the config alone.

    None for an architecture (or a variant, e.g. with cross-attention) this module does not
    describe; callers then count on the meta device instead.
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in ANALYTIC:
        return None
    if getattr(hf_config, "is_decoder", False) or getattr(hf_config, "add_cross_attention", False):
        return None
    prefix, family = ANALYTIC[model_type]
    p = "encoder" if head == "linear" else prefix  # native: the default head's module tree
    if model_type == "mpnet":
        mods = _mpnet(hf_config, p)
    elif model_type == "distilbert":
        mods = _distilbert(hf_config, p)
    elif model_type == "deberta-v2":
        mods = _deberta_v2(hf_config, p)
    else:
        # Only bert's sequence classifier keeps the pretrained pooler; the others (and the
        # linear head, built with add_pooling_layer=False) have none.
        mods = _bert_like(
            hf_config, p, pooler=(head != "linear" and model_type == "bert"),
            embedding_size=hf_config.embedding_size if model_type == "electra" else None,
        )
    hidden = hf_config.dim if model_type == "distilbert" else hf_config.hidden_size
    if head == "linear":
        mods += [_none("dropout"), _linear("classifier", hidden, num_labels)]
        head_names = ["classifier"]
    elif model_type == "bert":
        mods += [_none("dropout"), _linear("classifier", hidden, num_labels)]
        head_names = ["classifier"]
    elif model_type == "distilbert":
        mods += [_linear("pre_classifier", hidden, hidden), _linear("classifier", hidden, num_labels), _none("dropout")]
        head_names = ["pre_classifier", "classifier"]
    elif model_type == "deberta-v2":
        pooled = getattr(hf_config, "pooler_hidden_size", hidden)
        mods += [_linear("pooler.dense", pooled, pooled), _none("pooler.dropout"),
                 _linear("classifier", hidden, num_labels), _none("dropout")]
        head_names = ["pooler", "classifier"]
    else:  # roberta-style ClassificationHead: dense + out_proj
        mods += [_linear("classifier.dense", hidden, hidden), _none("classifier.dropout"),
                 _linear("classifier.out_proj", hidden, num_labels)]
        if model_type == "electra":
            mods.append(_none("classifier.activation"))
        head_names = ["classifier"]
    layers = hf_config.n_layers if model_type == "distilbert" else hf_config.num_hidden_layers
    inv = Inventory(model_type, head, mods, head_names, layers, hidden)
    inv.roles = _roles(inv, _ROLE_NAMES[family])
    return inv


def _roles(inv: Inventory, names: dict[str, Any]) -> dict[str, list[str]]:
    present = set(inv.block_relative(0))
    q, k, v, o = names["q"], names["k"], names["v"], names["o"]
    roles = {"qv": [q, v], "qkv": [q, k, v], "attn": [q, k, v, o], "all": _linear_in_block(inv)}
    return {role: ns for role, ns in roles.items() if ns and all(n in present for n in ns)}


def _linear_in_block(inv: Inventory) -> list[str]:
    found = []
    for n in inv.block_relative(0):
        mod = inv.by_name.get(f"{inv.block_prefix}.0.{n}")
        if mod is not None and mod.kind == "linear":
            found.append(n)
    return found


def inventory_from_model(model: "torch.nn.Module", head: str, model_type: str = "?") -> Inventory:
    """The inventory of an already built module tree (meta device is fine).

    Used for architectures without an analytic description, and by the tests, which check that
    `module_inventory` describes exactly what transformers builds.
    """
    import torch

    from budgetlora.modeling import head_module_names

    mods: list[Module] = []
    for name, mod in model.named_modules():
        own = dict(mod.named_parameters(recurse=False))
        if not own:
            if name and not any(True for _ in mod.children()):
                mods.append(Module(name, "none", 0, 0, 0, 0))
            continue
        bias = own["bias"].numel() if own.get("bias") is not None else 0
        weight = sum(p.numel() for n, p in own.items() if n != "bias")
        if isinstance(mod, torch.nn.Linear):
            mods.append(Module(name, "linear", mod.in_features, mod.out_features, weight, bias))
        elif isinstance(mod, torch.nn.Embedding):
            mods.append(Module(name, "embedding", mod.num_embeddings, mod.embedding_dim, weight, bias))
        elif isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            mods.append(Module(name, "conv", mod.in_channels, mod.out_channels, weight, bias))
        elif "norm" in type(mod).__name__.lower():
            mods.append(Module(name, "norm", 0, 0, weight, bias))
        else:  # includes transformers' Conv1D, which peft adapts with transposed weights
            mods.append(Module(name, "other", 0, 0, weight, bias))
    layers = {int(m.group("idx")) for m in (_LAYER_INDEX.match(x.name) for x in mods) if m}
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0) or 0
    inv = Inventory(model_type, head, mods, head_module_names(model), max(layers) + 1 if layers else 0, hidden, exact=False)
    linear_in_block = _linear_in_block(inv)
    inv.roles = {"all": linear_in_block} if linear_in_block else {}
    return inv


# ---------------------------------------------------------------------------------------------
# peft's rules, replayed on module names (peft 0.21: tuners_utils.check_target_module_exists,
# _maybe_include_all_linear_layers, _mark_only_adapters_as_trainable, other._set_trainable)
# ---------------------------------------------------------------------------------------------


@dataclass
class Adapted:
    name: str
    r: int
    in_features: int
    out_features: int


@dataclass
class Analysis:
    breakdown: Breakdown
    adapted: list[Adapted]  # modules that get LoRA, in model order
    wrapped: list[str]  # modules peft replaces by a trainable copy (head + modules_to_train)


_LORA_INTERNALS = (
    "base_layer", "lora_dropout", "lora_dropout.default", "lora_A", "lora_A.default", "lora_B",
    "lora_B.default", "lora_magnitude_vector", "lora_magnitude_vector.default",
)


class _NeedsMeta(Exception):
    """The analytic model does not cover this case; count the built model instead."""


def modules_to_save(run: RunConfig, head_names: list[str], model_type: Optional[str] = None) -> list[str]:
    """What peft gets as `modules_to_save` (model.peft_lora_config), plus the names that
    PeftModelForSequenceClassification appends for the `default` head (SEQ_CLS task). The
    `native` head saves its output layer alone (modeling.add_lora)."""
    if run.model.head == "native":
        head_names = [native_head(model_type).output]
    names = list(head_names) + list(run.lora.modules_to_train)
    if run.model.head == "default":
        names += ["classifier", "score"]
    return names


def _check_combination(run: RunConfig) -> None:
    lora = run.lora
    if isinstance(lora.target_modules, str) and lora.layers:
        # peft's LoraConfig refuses this too, but with a traceback from deep inside model.py
        raise ConfigError(
            "layers: cannot be combined with target_modules 'all-linear' or a regular expression "
            "(a peft rule); list module suffixes instead, e.g. --target-modules query,key,value,dense"
        )


def analyse(run: RunConfig, inv: Inventory) -> Analysis:
    """Which modules get LoRA, which are saved whole, and the resulting counts.

    Raises ConfigError where peft would refuse the configuration, and `_NeedsMeta` where the
    name-level replay is not certain to match peft (callers fall back to counting on meta).
    """
    _check_combination(run)
    from budgetlora.config import resolve_relative_layers

    run = resolve_relative_layers(run, inv.num_layers)  # the mapping model.add_lora applies too
    lora = run.lora
    save = modules_to_save(run, inv.head_names, inv.model_type)
    try:
        save_guards = [re.compile(rf"(^|.*\.){m}($|\..*)") for m in save]
    except re.error as e:
        raise ConfigError(f"modules_to_train: not a valid module name pattern ({e})") from None
    if any(not m for m in save):
        raise _NeedsMeta("empty modules_to_train entry")

    # modules_to_save: peft wraps every module whose name ends with an entry (a plain string
    # suffix, not a dotted one). A wrapped module inside another wrapped one is an edge case
    # whose outcome depends on peft internals: leave it to the real thing.
    wrapped = [k for k in inv.keys if any(k.endswith(m) for m in save)]
    wrapped_set = set(wrapped)
    for k in wrapped:
        parts = k.split(".")
        if any(".".join(parts[:i]) in wrapped_set for i in range(1, len(parts))):
            raise _NeedsMeta(f"{k} is nested inside another module to save")

    def wrapper_of(name: str) -> Optional[str]:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in wrapped_set:
                return prefix
        return None

    target = lora.target_modules
    if run.model.head == "native":
        target = native_targets(target, native_head(inv.model_type))
    layers = list(lora.layers) if lora.layers else None
    if isinstance(target, str):
        if target.lower() == "all-linear":
            # Every nn.Linear; peft drops the output embedding (none here) and, for SEQ_CLS,
            # the module called `classifier`, which modules_to_save excludes anyway.
            all_linear = {m.name for m in inv.modules if m.kind == "linear"}
            if run.model.head == "default":
                all_linear.discard("classifier")
            if any(m.kind == "other" for m in inv.modules):
                raise _NeedsMeta("unknown layer types may count as linear for peft")

            def matches(key: str) -> bool:
                return key in all_linear
        else:
            try:
                pattern = re.compile(target)
            except re.error as e:
                raise ConfigError(f"target_modules: not a valid regular expression ({e})") from None

            def matches(key: str) -> bool:
                return pattern.fullmatch(key) is not None
    else:
        targets = list(target)
        exact = set(targets)
        suffixes = tuple("." + t for t in targets)

        def matches(key: str) -> bool:
            if key in exact:
                return True
            if not key.endswith(suffixes):
                return False
            if layers is not None:
                idx = inv.layer_of.get(key)
                return idx is not None and idx in layers
            return True

    rank_keys = list(lora.rank_pattern)
    for pat in rank_keys:
        try:
            re.compile(pat)
        except re.error as e:
            raise ConfigError(f"rank_pattern: {pat!r} is not a valid regular expression ({e})") from None
    out = Breakdown()
    adapted: list[Adapted] = []
    excluded_any = False
    for key in inv.keys:
        if any(g.match(key) for g in save_guards):
            excluded_any = excluded_any or bool(matches(key))
            continue
        if not matches(key):
            continue
        mod = inv.by_name.get(key)
        if mod is None or mod.kind in ("norm", "none"):
            what = {None: "a block of modules", "norm": "a normalisation layer"}.get(
                mod.kind if mod else None, "a module without weights (dropout, activation)")
            raise ConfigError(
                f"target_modules/layers: {key} is {what}, which LoRA cannot adapt; "
                "target Linear layers (e.g. query,value or all-linear)"
            )
        if mod.kind != "linear":
            raise _NeedsMeta(f"LoRA on a {mod.kind} layer")
        if wrapper_of(key) is not None:
            raise _NeedsMeta(f"{key} is both adapted and saved whole")
        r = lora.r
        for pat in rank_keys:  # peft's get_pattern_key: first pattern matching a name suffix
            if re.match(rf"(.*\.)?({pat})$", key):
                r = lora.rank_pattern[pat]
                break
        adapted.append(Adapted(key, r, mod.in_features, mod.out_features))
        out.lora_A += r * mod.in_features
        out.lora_B += mod.out_features * r
        if lora.use_dora:
            out.dora_magnitude += mod.out_features
        if lora.bias == "lora_only":
            out.bias += mod.bias

    # peft matches modules_to_save after inserting LoRA, so an entry can also hit LoRA's own
    # submodules (`...query.lora_dropout` ends with "dropout"): not worth replaying.
    for a in adapted:
        for part in _LORA_INTERNALS:
            if any(f"{a.name}.{part}".endswith(m) for m in save):
                raise _NeedsMeta(f"modules_to_train also matches {a.name}.{part}")

    if not adapted:
        shown = target if isinstance(target, str) else ",".join(target)
        why = " (all matches are parts of the head or of modules_to_train)" if excluded_any else ""
        raise ConfigError(
            f"target_modules/layers: no module of this {inv.model_type} model matches {shown!r}"
            + (f" on layers {layers}" if layers else "") + why
        )

    for k in wrapped:
        size = sum(m.params for m in inv.modules if m.name == k or m.name.startswith(k + "."))
        if k.split(".")[0] in inv.head_names:
            out.head += size
        else:
            out.other += size
    if lora.bias == "all":
        # peft marks every *.bias trainable, then modules_to_save freezes the originals it
        # wraps (their trainable copies are already counted whole above).
        out.bias += sum(m.bias for m in inv.modules if wrapper_of(m.name) is None)
    return Analysis(out, adapted, wrapped)


# ---------------------------------------------------------------------------------------------
# Public API: estimate, check, config loading
# ---------------------------------------------------------------------------------------------


def estimate(run: RunConfig, hf_config: Any, num_labels: int) -> Breakdown:
    """Trainable parameters of `run` on this model config, computed without any weights.

    Analytic for roberta, xlm-roberta, camembert, bert, electra, mpnet, distilbert and
    deberta-v2 (no torch or peft import); any other architecture, or a setting the analytic
    replay does not cover exactly, is built on the meta device and counted.
    """
    _check_combination(run)
    inv = module_inventory(hf_config, run.model.head, num_labels)
    if inv is not None:
        try:
            return analyse(run, inv).breakdown
        except _NeedsMeta:
            pass
    return count_on_meta(run, hf_config, num_labels)


def count_on_meta(run: RunConfig, hf_config: Any, num_labels: int) -> Breakdown:
    """Build the classifier and add LoRA on the meta device (shapes, no memory), then count."""
    import torch

    from budgetlora.modeling import add_lora, build_classifier_from_config

    cfg = copy.deepcopy(hf_config)
    cfg.num_labels = num_labels
    run = copy.deepcopy(run)
    # The initialisation cannot change a count, and some (pissa, eva, loftq) need real weights.
    run.lora.init_lora_weights = "true"
    try:
        # peft and transformers warn about things that only matter for training a real model
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = add_lora(build_classifier_from_config(run.model, cfg), run)
    except ValueError as e:  # peft's config checks, raised before add_lora's own translation
        raise ConfigError(f"target_modules/layers: {str(e).splitlines()[0]}") from None
    except TypeError as e:  # peft: "modules_to_save cannot be applied to modules of type ..."
        raise ConfigError(f"modules_to_train: {str(e).splitlines()[0]}") from None
    return count_trainable(model)


def check_budget(breakdown: Breakdown, budget: int) -> None:
    """Refuse a configuration that is not strictly under the budget, in one line that says what
    takes the room and what to change."""
    total = breakdown.total
    if total < budget:
        return
    over = total - budget + 1
    hints: list[tuple[int, str]] = []
    lora = breakdown.lora_A + breakdown.lora_B
    if breakdown.head and breakdown.head * 20 >= total:  # a small head (already linear) is not where the room goes
        hints.append((breakdown.head, f"--head linear (the head alone is {breakdown.head:,})"))
    if lora:
        hints.append((lora, "a smaller --r"))
        hints.append((lora - 1, "fewer --target-modules or --layers"))
    if breakdown.bias:
        hints.append((breakdown.bias, "--bias none"))
    if breakdown.dora_magnitude:
        hints.append((breakdown.dora_magnitude, "--no-use-dora"))
    if breakdown.other:
        hints.append((breakdown.other, "fewer --modules-to-train"))
    # Largest consumers first: those are the changes that can close the gap.
    suggestions = [text for size, text in sorted(hints, key=lambda h: -h[0])]
    advice = f"; to remove at least {over:,}, try " + ", ".join(suggestions) if suggestions else ""
    raise BudgetError(
        f"{total:,} trainable parameters is not under the budget of {budget:,} "
        f"({breakdown.describe()}){advice}, or see `budgetlora plan --budget {budget}`"
    )


def load_config_only(model: str, num_labels: int):
    """The transformers config of a Hub id, a local model folder or a config.json file.

    Nothing but the config is read, so a folder holding only config.json and the tokenizer is
    enough to plan or check a budget.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if num_labels < 1:
        raise ConfigError(f"labels: need at least one class, got {num_labels}")
    path = Path(model).expanduser()
    try:
        if path.is_file():
            return AutoConfig.from_pretrained(str(path), num_labels=num_labels)
        return AutoConfig.from_pretrained(model, num_labels=num_labels)
    except Exception as e:  # transformers raises OSError/ValueError/HF errors for one cause
        if path.is_file():
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelLoadError(f"{model}: not a usable model config.json ({text})") from None
        from budgetlora.modeling import _wrap_load_error

        raise _wrap_load_error("model config", model, e) from None


def describe_model(hf_config: Any) -> str:
    """'roberta, 12 layers, hidden 768' for headers and messages."""
    model_type = getattr(hf_config, "model_type", "?")
    layers = getattr(hf_config, "num_hidden_layers", None) or getattr(hf_config, "n_layers", None)
    hidden = getattr(hf_config, "hidden_size", None)
    bits = [model_type]
    if layers:
        bits.append(f"{layers} layers")
    if hidden:
        bits.append(f"hidden {hidden}")
    return ", ".join(bits)


__all__ = [
    "Breakdown", "count_trainable", "estimate", "check_budget", "load_config_only",
    "module_inventory", "inventory_from_model", "analyse", "count_on_meta", "Inventory", "Module",
]
