"""The encoder families the package knows by name, one `Family` record each.

A record holds every fact the package needs about a family: the transformers model types it
covers, where their encoder sits in the sequence classifier, which block modules play the
query/key/value/output roles (`plan`'s target sets), the modules of the architecture's own head,
the last layer's parts that `fast_paths.first_token_last_layer` cuts, the feed-forward pair that
`fast_paths.pack_linear_layers` fuses, and the function that lists the leaf modules a config
builds (`budget.estimate` replays peft on them instead of building a model).

Adding a family is adding one record to FAMILIES (with its module list builder);
tests/unit/modeling/test_architectures.py then checks every fact against what transformers
builds. Any other architecture still works: it is counted on the meta device and runs without
the fast paths. The layer count comes from `config.model_num_layers` for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from budgetlora.config import model_num_layers
from budgetlora.modeling.inventory import Inventory, Module, embedding, linear, no_params, norm

# (config, model_type, module prefix of the encoder, head) -> the encoder's leaf modules
EncoderModules = Callable[[Any, str, str, str], list[Module]]
# (config, model_type, num_labels) -> the leaf modules of the architecture's own head
HeadModules = Callable[[Any, str, int], list[Module]]


@dataclass(frozen=True)
class Family:
    name: str
    # model_type -> base_model_prefix of its ...ForSequenceClassification class (the `default`
    # head); the `linear` head (modeling.EncoderClassifier) keeps the encoder under "encoder"
    prefixes: Mapping[str, str]
    # q, k, v, o -> block-relative name of the linear module that plays that role
    roles: Mapping[str, str]
    # top-level modules of the `default` head, i.e. what modeling.head_module_names finds
    head_names: tuple[str, ...]
    # Inside an encoder layer: (the module whose output feeds the feed-forward block and its
    # residual, the self-attention module that calls transformers' attention interface with the
    # projected queries, keys and values; None where the family's attention computes position
    # biases in its own code, so there is no interface call to cut)
    last_layer_parts: tuple[str, Optional[str]]
    # (feed-forward linear, the activation module applied to its output and to nothing else)
    ffn_pair: tuple[str, str]
    encoder_modules: EncoderModules
    head_modules: HeadModules

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.prefixes)


# ---------------------------------------------------------------------------------------------
# Module lists, from a config
# ---------------------------------------------------------------------------------------------


def _block_dims(cfg: Any) -> tuple[int, int, int, int]:
    """(hidden, heads, attention width = heads x head size, feed-forward width) of a BERT-style block."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    return h, heads, heads * int(h / heads), cfg.intermediate_size


def _embeddings(cfg: Any, p: str, e: int, token_types: bool = False) -> list[Module]:
    """BERT's embedding block (without token types in MPNet and DistilBERT), width `e`."""
    types = [embedding(f"{p}.embeddings.token_type_embeddings", cfg.type_vocab_size, e)] if token_types else []
    return [
        embedding(f"{p}.embeddings.word_embeddings", cfg.vocab_size, e),
        embedding(f"{p}.embeddings.position_embeddings", cfg.max_position_embeddings, e),
        *types,
        norm(f"{p}.embeddings.LayerNorm", e),
        no_params(f"{p}.embeddings.dropout"),
    ]


def _bert_block_tail(b: str, h: int, inter: int) -> list[Module]:
    """A BERT-style layer after its q/k/v projections: attention output, feed-forward, norms."""
    return [
        no_params(f"{b}.attention.self.dropout"),
        linear(f"{b}.attention.output.dense", h, h),
        norm(f"{b}.attention.output.LayerNorm", h),
        no_params(f"{b}.attention.output.dropout"),
        linear(f"{b}.intermediate.dense", h, inter),
        no_params(f"{b}.intermediate.intermediate_act_fn"),
        linear(f"{b}.output.dense", inter, h),
        norm(f"{b}.output.LayerNorm", h),
        no_params(f"{b}.output.dropout"),
    ]


def _bert_like(cfg: Any, model_type: str, p: str, head: str) -> list[Module]:
    """bert, roberta, xlm-roberta, camembert, electra: same block, different embeddings."""
    h, heads, a, inter = _block_dims(cfg)
    e = cfg.embedding_size if model_type == "electra" else h
    mods = _embeddings(cfg, p, e, token_types=True)
    if e != h:
        mods.append(linear(f"{p}.embeddings_project", e, h))
    for i in range(model_num_layers(cfg)):
        b = f"{p}.encoder.layer.{i}"
        mods += [
            linear(f"{b}.attention.self.query", h, a),
            linear(f"{b}.attention.self.key", h, a),
            linear(f"{b}.attention.self.value", h, a),
            *_bert_block_tail(b, h, inter),
        ]
    # Only bert's sequence classifier keeps the pretrained pooler; the others (and the linear
    # head, built with add_pooling_layer=False) have none.
    if head != "linear" and model_type == "bert":  # default and native: the sequence classifier
        mods += [linear(f"{p}.pooler.dense", h, h), no_params(f"{p}.pooler.activation")]
    return mods


def _classification_head(cfg: Any, model_type: str, num_labels: int) -> list[Module]:
    """bert's dropout + linear; the roberta-style ClassificationHead (dense + out_proj) of the
    others, electra's with an activation module."""
    h = cfg.hidden_size
    if model_type == "bert":
        return [no_params("dropout"), linear("classifier", h, num_labels)]
    mods = [linear("classifier.dense", h, h), no_params("classifier.dropout"),
            linear("classifier.out_proj", h, num_labels)]
    if model_type == "electra":
        mods.append(no_params("classifier.activation"))
    return mods


def _mpnet(cfg: Any, model_type: str, p: str, head: str) -> list[Module]:
    h, heads, a, inter = _block_dims(cfg)
    mods = _embeddings(cfg, p, h)
    for i in range(model_num_layers(cfg)):
        b = f"{p}.encoder.layer.{i}"
        mods += [
            linear(f"{b}.attention.attn.q", h, a),
            linear(f"{b}.attention.attn.k", h, a),
            linear(f"{b}.attention.attn.v", h, a),
            linear(f"{b}.attention.attn.o", h, h),
            no_params(f"{b}.attention.attn.dropout"),
            norm(f"{b}.attention.LayerNorm", h),
            no_params(f"{b}.attention.dropout"),
            linear(f"{b}.intermediate.dense", h, inter),
            no_params(f"{b}.intermediate.intermediate_act_fn"),
            linear(f"{b}.output.dense", inter, h),
            norm(f"{b}.output.LayerNorm", h),
            no_params(f"{b}.output.dropout"),
        ]
    mods.append(embedding(f"{p}.encoder.relative_attention_bias", cfg.relative_attention_num_buckets, heads))
    return mods


def _distilbert(cfg: Any, model_type: str, p: str, head: str) -> list[Module]:
    d = cfg.dim
    mods = _embeddings(cfg, p, d)
    for i in range(model_num_layers(cfg)):
        b = f"{p}.transformer.layer.{i}"
        mods += [
            no_params(f"{b}.attention.dropout"),
            linear(f"{b}.attention.q_lin", d, d),
            linear(f"{b}.attention.k_lin", d, d),
            linear(f"{b}.attention.v_lin", d, d),
            linear(f"{b}.attention.out_lin", d, d),
            norm(f"{b}.sa_layer_norm", d),
            no_params(f"{b}.ffn.dropout"),
            linear(f"{b}.ffn.lin1", d, cfg.hidden_dim),
            linear(f"{b}.ffn.lin2", cfg.hidden_dim, d),
            no_params(f"{b}.ffn.activation"),
            norm(f"{b}.output_layer_norm", d),
        ]
    return mods


def _distilbert_head(cfg: Any, model_type: str, num_labels: int) -> list[Module]:
    d = cfg.dim
    return [linear("pre_classifier", d, d), linear("classifier", d, num_labels), no_params("dropout")]


def _deberta_v2_layer(cfg: Any, b: str) -> list[Module]:
    h = cfg.hidden_size
    a = cfg.num_attention_heads * getattr(cfg, "attention_head_size", h // cfg.num_attention_heads)
    relative = getattr(cfg, "relative_attention", False)
    pos_types = cfg.pos_att_type if cfg.pos_att_type is not None else []
    separate_pos = relative and not getattr(cfg, "share_att_key", False)
    mods = [
        linear(f"{b}.attention.self.query_proj", h, a),
        linear(f"{b}.attention.self.key_proj", h, a),
        linear(f"{b}.attention.self.value_proj", h, a),
    ]
    if relative:
        mods.append(no_params(f"{b}.attention.self.pos_dropout"))
    if separate_pos and "c2p" in pos_types:
        mods.append(linear(f"{b}.attention.self.pos_key_proj", h, a))
    if separate_pos and "p2c" in pos_types:
        mods.append(linear(f"{b}.attention.self.pos_query_proj", h, a))
    return mods + _bert_block_tail(b, h, cfg.intermediate_size)


def _deberta_v2(cfg: Any, model_type: str, p: str, head: str) -> list[Module]:
    h = cfg.hidden_size
    e = getattr(cfg, "embedding_size", None) or h
    mods = [embedding(f"{p}.embeddings.word_embeddings", cfg.vocab_size, e)]
    if getattr(cfg, "position_biased_input", True):
        mods.append(embedding(f"{p}.embeddings.position_embeddings", cfg.max_position_embeddings, e))
    if cfg.type_vocab_size > 0:
        mods.append(embedding(f"{p}.embeddings.token_type_embeddings", cfg.type_vocab_size, e))
    if e != h:
        mods.append(linear(f"{p}.embeddings.embed_proj", e, h, bias=False))
    mods += [norm(f"{p}.embeddings.LayerNorm", h), no_params(f"{p}.embeddings.dropout")]
    for i in range(model_num_layers(cfg)):
        mods += _deberta_v2_layer(cfg, f"{p}.encoder.layer.{i}")
    if getattr(cfg, "relative_attention", False):
        max_rel = getattr(cfg, "max_relative_positions", -1)
        if max_rel < 1:
            max_rel = cfg.max_position_embeddings
        buckets = getattr(cfg, "position_buckets", -1)
        mods.append(embedding(f"{p}.encoder.rel_embeddings", 2 * (buckets if buckets > 0 else max_rel), h))
    if "layer_norm" in [x.strip() for x in getattr(cfg, "norm_rel_ebd", "none").lower().split("|")]:
        mods.append(norm(f"{p}.encoder.LayerNorm", h))
    kernel = getattr(cfg, "conv_kernel_size", 0)
    if kernel > 0:
        groups = getattr(cfg, "conv_groups", 1)
        mods.append(Module(f"{p}.encoder.conv.conv", "conv", h, h, h * (h // groups) * kernel, h))
        mods += [norm(f"{p}.encoder.conv.LayerNorm", h), no_params(f"{p}.encoder.conv.dropout")]
    return mods


def _deberta_v2_head(cfg: Any, model_type: str, num_labels: int) -> list[Module]:
    pooled = getattr(cfg, "pooler_hidden_size", cfg.hidden_size)
    return [linear("pooler.dense", pooled, pooled), no_params("pooler.dropout"),
            linear("classifier", cfg.hidden_size, num_labels), no_params("dropout")]


# ---------------------------------------------------------------------------------------------
# The records
# ---------------------------------------------------------------------------------------------

_BERT_FFN = ("dense", "intermediate_act_fn")  # BertIntermediate and its copies

FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        prefixes={"roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta", "bert": "bert",
                  "electra": "electra"},
        roles={"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "o": "attention.output.dense"},
        head_names=("classifier",),
        last_layer_parts=("attention", "attention.self"),
        ffn_pair=_BERT_FFN,
        encoder_modules=_bert_like,
        head_modules=_classification_head,
    ),
    Family(
        name="mpnet",
        prefixes={"mpnet": "mpnet"},
        roles={"q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v", "o": "attention.attn.o"},
        head_names=("classifier",),
        last_layer_parts=("attention", None),
        ffn_pair=_BERT_FFN,
        encoder_modules=_mpnet,
        head_modules=_classification_head,
    ),
    Family(
        name="distilbert",
        prefixes={"distilbert": "distilbert"},
        roles={"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin"},
        head_names=("pre_classifier", "classifier"),
        # the residual LayerNorm after the attention is `sa_layer_norm`
        last_layer_parts=("sa_layer_norm", "attention"),
        ffn_pair=("lin1", "activation"),
        encoder_modules=_distilbert,
        head_modules=_distilbert_head,
    ),
    Family(
        name="deberta-v2",
        prefixes={"deberta-v2": "deberta"},
        roles={"q": "attention.self.query_proj", "k": "attention.self.key_proj", "v": "attention.self.value_proj",
               "o": "attention.output.dense"},
        head_names=("pooler", "classifier"),
        last_layer_parts=("attention", None),
        ffn_pair=_BERT_FFN,
        encoder_modules=_deberta_v2,
        head_modules=_deberta_v2_head,
    ),
)

_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_of(model_type: Optional[str]) -> Optional[Family]:
    """The record of the family covering this transformers model type; None for any other."""
    return _BY_MODEL_TYPE.get(model_type) if model_type else None


# ---------------------------------------------------------------------------------------------
# The inventory of a config
# ---------------------------------------------------------------------------------------------


def module_inventory(hf_config: Any, head: str, num_labels: int) -> Optional[Inventory]:
    """The leaf modules `build_classifier_from_config` builds, computed from the config alone.

    None for an architecture (or a variant, e.g. with cross-attention) no family describes;
    callers then count on the meta device instead.
    """
    model_type = getattr(hf_config, "model_type", None)
    family = family_of(model_type)
    if family is None:
        return None
    if getattr(hf_config, "is_decoder", False) or getattr(hf_config, "add_cross_attention", False):
        return None
    prefix = "encoder" if head == "linear" else family.prefixes[model_type]  # native: the default tree
    mods = family.encoder_modules(hf_config, model_type, prefix, head)
    hidden = hf_config.hidden_size
    if head != "linear":
        mods += family.head_modules(hf_config, model_type, num_labels)
        head_names = list(family.head_names)
    else:  # EncoderClassifier: its dropout and one linear layer
        mods += [no_params("dropout"), linear("classifier", hidden, num_labels)]
        head_names = ["classifier"]
    inv = Inventory(model_type, head, mods, head_names, model_num_layers(hf_config), hidden)
    inv.roles = _roles(inv, family.roles)
    return inv


def _roles(inv: Inventory, names: Mapping[str, str]) -> dict[str, list[str]]:
    """plan's target sets: q,v; q,k,v; q,k,v,o; every linear module of a block."""
    present = set(inv.block_relative(0))
    q, k, v, o = names["q"], names["k"], names["v"], names["o"]
    roles = {"qv": [q, v], "qkv": [q, k, v], "attn": [q, k, v, o], "all": inv.linear_in_block()}
    return {role: ns for role, ns in roles.items() if ns and all(n in present for n in ns)}
