"""peft's rules, replayed on module names (peft 0.21: tuners_utils.check_target_module_exists,
_maybe_include_all_linear_layers, _mark_only_adapters_as_trainable, other._set_trainable).

`analyse` says which modules of an inventory get LoRA, which are saved whole and what trains,
without building a model or importing peft. Where the replay is not certain to match peft it
raises `NeedsMeta`, and the caller counts a model built on the meta device instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from budgetlora.budget.counting import Breakdown
from budgetlora.budget.methods import add_module_cost
from budgetlora.config import LORA_FAMILY, LoraConfig, RunConfig, resolve_relative_layers, resolved_method
from budgetlora.errors import ConfigError
from budgetlora.modeling import Inventory
from budgetlora.modeling.head_specs import native_head, native_targets


@dataclass
class Adapted:
    name: str
    r: int  # the module's rank (LoRA, LoKr, LoHa; AdaLoRA's initial rank); 0 where a method has none
    in_features: int
    out_features: int


@dataclass
class Analysis:
    breakdown: Breakdown
    adapted: list[Adapted]  # modules that get an adapter (LoRA or the run's method), in model order
    wrapped: list[str]  # modules peft replaces by a trainable copy (head + modules_to_train)


class NeedsMeta(Exception):
    """The analytic model does not cover this case; count the built model instead."""


_LORA_INTERNALS = (
    "base_layer", "lora_dropout", "lora_dropout.default", "lora_A", "lora_A.default", "lora_B",
    "lora_B.default", "lora_magnitude_vector", "lora_magnitude_vector.default",
)


def modules_to_save(run: RunConfig, head_names: list[str], model_type: Optional[str] = None) -> list[str]:
    """What peft gets as `modules_to_save` (modeling.peft_lora_config), plus the names that
    PeftModelForSequenceClassification appends for the `default` head (SEQ_CLS task). The
    `native` head saves its output layer alone (modeling.add_lora)."""
    if run.model.head == "native":
        head_names = [native_head(model_type).output]
    names = list(head_names) + list(run.lora.modules_to_train)
    if run.model.head == "default":
        names += ["classifier", "score"]
    return names


def check_combination(run: RunConfig) -> None:
    lora = run.lora
    if isinstance(lora.target_modules, str) and lora.layers:
        # peft's LoraConfig refuses this too, but with a traceback from deep inside model.py
        raise ConfigError(
            "layers: cannot be combined with target_modules 'all-linear' or a regular expression "
            "(a peft rule); list module suffixes instead, e.g. --target-modules query,key,value,dense"
        )


def analyse(run: RunConfig, inv: Inventory) -> Analysis:
    """Which modules get the run's adapter, which are saved whole, and the resulting counts.

    Raises ConfigError where peft would refuse the configuration, and `NeedsMeta` where the
    name-level replay is not certain to match peft (callers fall back to counting on meta).
    """
    check_combination(run)
    run = resolve_relative_layers(run, inv.num_layers)  # the mapping modeling.add_lora applies too
    method = resolved_method(run)
    save = modules_to_save(run, inv.head_names, inv.model_type)
    guards, wrapped = _saved_whole(save, inv)
    if method in ("bias", "prompt", "full"):  # nothing is adapted: every bias, virtual tokens, or everything
        return Analysis(_whole_model_count(run, method, inv, wrapped), [], wrapped)
    matches = _norm_matcher(inv) if method == "layernorm" else _target_matcher(run, inv)
    _check_rank_patterns(run.lora)
    adapted, excluded_any = _adapted(run, method, inv, matches, guards, set(wrapped))
    # peft matches modules_to_save after inserting the adapter, so an entry can also hit the
    # adapter's own submodules (`...query.lora_dropout` ends with "dropout"): not worth replaying.
    for a in adapted:
        for part in _LORA_INTERNALS:
            if any(f"{a.name}.{part}".endswith(m) for m in save):
                raise NeedsMeta(f"modules_to_train also matches {a.name}.{part}")
    if run.lora.modules_to_train and method not in LORA_FAMILY:
        raise NeedsMeta(f"modules_to_train with {method}: its own submodules are not listed here")
    if not adapted:
        target, layers = run.lora.target_modules, run.lora.layers
        shown = "the normalisation layers" if method == "layernorm" else (
            repr(target) if isinstance(target, str) else repr(",".join(target)))
        why = " (all matches are parts of the head or of modules_to_train)" if excluded_any else ""
        raise ConfigError(
            f"target_modules/layers: no module of this {inv.model_type} model matches {shown}"
            + (f" on layers {list(layers)}" if layers else "") + why
        )
    return Analysis(_count(run, method, inv, adapted, wrapped), adapted, wrapped)


def _norm_matcher(inv: Inventory) -> Callable[[str], bool]:
    """LayerNorm tuning's targets: the encoder's normalisation layers (modeling.methods lists the
    same ones on the built model)."""
    if not inv.exact or any(m.kind == "other" for m in inv.modules):
        raise NeedsMeta("module kinds not certain")
    norms = {m.name for m in inv.modules if m.kind == "norm" and m.name.split(".")[0] not in inv.head_names}
    return norms.__contains__


def _whole_model_count(run: RunConfig, method: str, inv: Inventory, wrapped: list[str]) -> Breakdown:
    """BitFit: every bias outside the head, which trains whole. Full fine-tuning: every parameter
    (weights under `other`). Prompt tuning: the virtual tokens' embeddings (num_virtual_tokens x
    the word embeddings' width) and the head."""
    out = Breakdown()
    _add_wrapped(out, inv, wrapped)
    if method in ("bias", "full"):
        wrapped_set = set(wrapped)
        outside = [m for m in inv.modules if _wrapper_of(m.name, wrapped_set) is None]
        out.bias += sum(m.bias for m in outside)
        if method == "full":
            if not inv.exact or any(m.kind == "other" for m in outside):
                raise NeedsMeta("module kinds not certain")
            out.other += sum(m.weight for m in outside)
        return out
    words = [m for m in inv.modules if m.kind == "embedding" and m.name.endswith("word_embeddings")]
    if len(words) != 1 or not inv.exact:
        raise NeedsMeta("word embeddings not identified")
    out.prompt += run.adapter.num_virtual_tokens * words[0].out_features
    return out


def _saved_whole(save: list[str], inv: Inventory) -> tuple[list[re.Pattern], list[str]]:
    """(patterns of the names peft keeps out of LoRA, the modules it wraps as trainable copies).

    modules_to_save: peft wraps every module whose name ends with an entry (a plain string
    suffix, not a dotted one). A wrapped module inside another wrapped one is an edge case whose
    outcome depends on peft internals: left to the real thing.
    """
    try:
        guards = [re.compile(rf"(^|.*\.){m}($|\..*)") for m in save]
    except re.error as e:
        raise ConfigError(f"modules_to_train: not a valid module name pattern ({e})") from None
    if any(not m for m in save):
        raise NeedsMeta("empty modules_to_train entry")
    wrapped = [k for k in inv.keys if any(k.endswith(m) for m in save)]
    wrapped_set = set(wrapped)
    for k in wrapped:
        parts = k.split(".")
        if any(".".join(parts[:i]) in wrapped_set for i in range(1, len(parts))):
            raise NeedsMeta(f"{k} is nested inside another module to save")
    return guards, wrapped


def _wrapper_of(name: str, wrapped: set[str]) -> Optional[str]:
    """The module saved whole that `name` is (or is inside), if any."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in wrapped:
            return prefix
    return None


def _target_matcher(run: RunConfig, inv: Inventory) -> Callable[[str], bool]:
    """Whether peft's target_modules (and layers) select a module name."""
    target = run.lora.target_modules
    if run.model.head == "native":
        target = native_targets(target, native_head(inv.model_type))
    if isinstance(target, str) and target.lower() == "all-linear":
        # Every nn.Linear; peft drops the output embedding (none here) and, for SEQ_CLS,
        # the module called `classifier`, which modules_to_save excludes anyway.
        all_linear = {m.name for m in inv.modules if m.kind == "linear"}
        if run.model.head == "default":
            all_linear.discard("classifier")
        if any(m.kind == "other" for m in inv.modules):
            raise NeedsMeta("unknown layer types may count as linear for peft")
        return all_linear.__contains__
    if isinstance(target, str):
        try:
            pattern = re.compile(target)
        except re.error as e:
            raise ConfigError(f"target_modules: not a valid regular expression ({e})") from None
        return lambda key: pattern.fullmatch(key) is not None
    exact = set(target)
    suffixes = tuple("." + t for t in target)
    layers = list(run.lora.layers) if run.lora.layers else None

    def matches(key: str) -> bool:
        if key in exact:
            return True
        if not key.endswith(suffixes):
            return False
        if layers is not None:
            idx = inv.layer_of.get(key)
            return idx is not None and idx in layers
        return True

    return matches


def _check_rank_patterns(lora: LoraConfig) -> None:
    for pat in lora.rank_pattern:
        try:
            re.compile(pat)
        except re.error as e:
            raise ConfigError(f"rank_pattern: {pat!r} is not a valid regular expression ({e})") from None


def _rank_of(key: str, lora: LoraConfig) -> int:
    for pat in lora.rank_pattern:  # peft's get_pattern_key: first pattern matching a name suffix
        if re.match(rf"(.*\.)?({pat})$", key):
            return lora.rank_pattern[pat]
    return lora.r


def _adapted(run: RunConfig, method: str, inv: Inventory, matches: Callable[[str], bool], guards: list[re.Pattern],
             wrapped: set[str]) -> tuple[list[Adapted], bool]:
    """(the modules that get the adapter, in model order; whether a match was left out because it
    is saved whole). Raises where peft refuses a match or the replay is not certain."""
    adapted: list[Adapted] = []
    excluded_any = False
    wanted = "norm" if method == "layernorm" else "linear"
    for key in inv.keys:
        if any(g.match(key) for g in guards):
            excluded_any = excluded_any or bool(matches(key))
            continue
        if not matches(key):
            continue
        mod = inv.by_name.get(key)
        if method != "layernorm" and (mod is None or mod.kind in ("norm", "none")):
            what = {None: "a block of modules", "norm": "a normalisation layer"}.get(
                mod.kind if mod else None, "a module without weights (dropout, activation)")
            raise ConfigError(
                f"target_modules/layers: {key} is {what}, which {method} cannot adapt; "
                "target Linear layers (e.g. query,value or all-linear)"
            )
        if mod is None or mod.kind != wanted:
            shown = "LoRA" if method in LORA_FAMILY else method
            raise NeedsMeta(f"{shown} on a {mod.kind if mod else 'block of'} layer")
        if _wrapper_of(key, wrapped) is not None:
            raise NeedsMeta(f"{key} is both adapted and saved whole")
        rank = (run.adapter.adalora_init_r if method == "adalora" else
                _rank_of(key, run.lora) if method in LORA_FAMILY + ("lokr", "loha") else 0)
        adapted.append(Adapted(key, rank, mod.in_features, mod.out_features))
    return adapted, excluded_any


def _count(run: RunConfig, method: str, inv: Inventory, adapted: list[Adapted], wrapped: list[str]) -> Breakdown:
    out = Breakdown()
    lora = run.lora
    for a in adapted:
        if method == "layernorm":
            out.layernorm += inv.by_name[a.name].params
        else:
            add_module_cost(out, method, run, a.name, a.r, a.in_features, a.out_features)
        if lora.bias == "lora_only":
            out.bias += inv.by_name[a.name].bias
    _add_wrapped(out, inv, wrapped)
    if lora.bias == "all":
        # peft marks every *.bias trainable, then modules_to_save freezes the originals it
        # wraps (their trainable copies are already counted whole above).
        wrapped_set = set(wrapped)
        out.bias += sum(m.bias for m in inv.modules if _wrapper_of(m.name, wrapped_set) is None)
    return out


def _add_wrapped(out: Breakdown, inv: Inventory, wrapped: list[str]) -> None:
    """The modules saved whole: the head's under `head`, modules_to_train under `other`."""
    for k in wrapped:
        size = sum(m.params for m in inv.modules if m.name == k or m.name.startswith(k + "."))
        if k.split(".")[0] in inv.head_names:
            out.head += size
        else:
            out.other += size
