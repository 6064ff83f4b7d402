"""The planner: the adapter configurations that fit a budget, best first, from the model config
alone. `budgetlora plan` prints them (commands.plan); `train` takes the first plain-LoRA one when
no adapter setting is given (budget.defaults), which is why the planner lives here, below training.

Candidates are method x head (default | linear | native) x target set (q,v | q,k,v | q,k,v,o |
every linear layer of a block) x layer subset (all, or the top 3/4, 1/2, 1/3, 1/4, 2 or 1
blocks; LoRA and DoRA only). For each one the size (the rank, for LoRA) is the largest that keeps
the count strictly under the budget; smaller sizes of the same placement are not listed, as they
only give capacity away. Counts come from `budget.estimate`'s analytic replay of peft, so
planning needs the model config only (no weights) and takes well under a second per method.

Ranking (documented in docs/BUDGET.md): the linear head's candidates first (measured, see
`rank`), then by score = coverage x r / (r + 4), where coverage is the
share of the encoder's linear layers that get an adapter ('all-linear' = 1). Spreading LoRA
over more weight matrices beats a higher rank on fewer (Hu et al. 2021, table 5; QLoRA), and
returns in r flatten quickly (Hu et al. table 6), which r / (r + 4) models: r=4 earns half
the credit of an unbounded rank, r=8 two thirds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

from budgetlora.budget import measured
from budgetlora.budget.counting import Breakdown
from budgetlora.budget.estimate import count_on_meta, inventory_from_model
from budgetlora.budget.methods import add_module_cost, lokr_params
from budgetlora.budget.rules import Analysis, NeedsMeta, analyse
from budgetlora.config import (
    DEFAULT_BUDGET, HEADS, DataConfig, LoraConfig, ModelConfig, RunConfig, field_index, prompt_room, to_flags,
)
from budgetlora.errors import ConfigError, closest_match
from budgetlora.modeling import Inventory, module_inventory
from budgetlora.modeling.head_specs import NATIVE_HEADS

MAX_RANK = 64  # beyond this LoRA ranks rarely help (Hu et al. table 6) and plans get silly
RANK_HALF_CREDIT = 4  # the r that earns half of the rank credit in the score
ROLES = ("all", "attn", "qkv", "qv", "kv+ffn")
# The methods `plan` enumerates, in the order that breaks ties (plain LoRA first). rsLoRA is not
# listed: it counts exactly as LoRA (only the scale differs), so its rows would repeat LoRA's.
PLAN_METHODS = ("lora", "dora", "adalora", "vera", "fourierft", "lokr", "loha", "ia3", "bias", "layernorm", "prompt")
# The setting each method's plan fills up to the budget, its cap and how the table shows it.
# Caps: LoRA-style ranks as MAX_RANK; VeRA's r=1024 and FourierFT's n=1000-2000 are the papers'
# roberta-base settings; each virtual token makes every text a token longer.
SIZES = {
    "lora": ("r", MAX_RANK, "r"), "dora": ("r", MAX_RANK, "r"), "lokr": ("r", MAX_RANK, "r"),
    "loha": ("r", MAX_RANK, "r"), "adalora": ("adalora_init_r", MAX_RANK, "r"), "vera": ("vera_r", 1024, "r"),
    "fourierft": ("fourierft_n_frequency", 4096, "n"), "prompt": ("num_virtual_tokens", 64, "tokens"),
}
# The smallest size a method can run at: AdaLoRA must have a rank to prune (target_r < init_r).
MIN_SIZE = {"adalora": 2}
WHOLE_MODEL = {"bias": "every bias", "layernorm": "every LayerNorm", "prompt": "virtual tokens"}


@dataclass
class Candidate:
    head: str
    role: str
    target_modules: Union[list[str], str, None]  # None: the method picks what trains (bias, layernorm, prompt)
    layers: Optional[list[int]]  # None: every layer
    method: str
    size: int  # the value of the method's SIZES setting; 0 for methods without one (ia3, bias, layernorm)
    breakdown: Breakdown
    adapted: int  # modules that get an adapter
    coverage: float
    score: float
    feedforward: list[str] = field(default_factory=list)  # IA3's feed-forward targets

    @property
    def trainable_params(self) -> int:
        return self.breakdown.total

    @property
    def use_dora(self) -> bool:
        return self.method == "dora"

    @property
    def r(self) -> Optional[int]:
        """The rank of a rank-r method (LoRA, DoRA, LoKr, LoHa, AdaLoRA's initial rank)."""
        return self.size if SIZES.get(self.method, ("",))[0] in ("r", "adalora_init_r") else None

    @property
    def lora_alpha(self) -> int:
        # alpha = 2r keeps the LoRA scale alpha/r at 2 for every rank (r=8, alpha=16 convention)
        return 2 * self.size

    @property
    def targets_text(self) -> str:
        if self.target_modules is None:
            return WHOLE_MODEL[self.method]
        return self.target_modules if isinstance(self.target_modules, str) else ",".join(self.target_modules)

    @property
    def size_text(self) -> str:
        return f"{SIZES[self.method][2]}={self.size}" if self.method in SIZES else "-"

    def settings(self) -> dict[str, Any]:
        """The run settings of this configuration, in the order `train` flags show them."""
        out: dict[str, Any] = {} if self.method == "lora" else {"method": self.method}
        out["head"] = self.head
        if self.target_modules is not None:
            out["target_modules"] = self.target_modules
        if self.layers is not None:
            out["layers"] = self.layers
        if self.method in ("lora", "dora", "lokr", "loha"):
            out.update(r=self.size, lora_alpha=self.lora_alpha)
        elif self.method == "adalora":  # peft's default end point: two thirds of the initial rank
            out.update(adalora_init_r=self.size, adalora_target_r=max(1, round(2 * self.size / 3)),
                       lora_alpha=self.lora_alpha)
        elif self.method in SIZES:
            out[SIZES[self.method][0]] = self.size
        if self.feedforward:
            out["ia3_feedforward_modules"] = self.feedforward
        return out

    def run_config(self) -> RunConfig:
        """These settings as a RunConfig, built directly: `from_dict` types every value from the
        dataclass annotations, which cost most of a plan's time when done per count."""
        run = RunConfig(model=ModelConfig(head=self.head))
        for name, value in self.settings().items():
            section = _SECTION_OF[name]
            setattr(getattr(run, section) if section else run, name, value)
        return run

    def train_args(self, model: str, budget: int) -> list[str]:
        """The `budgetlora train` flags that reproduce this configuration."""
        settings: dict[str, Any] = {"model": model, **self.settings()}
        if budget != DEFAULT_BUDGET:
            settings["budget"] = budget
        return to_flags(settings)

    def as_json(self, model: str, budget: int) -> dict[str, Any]:
        return {
            "trainable_params": self.trainable_params,
            "share_of_budget": round(self.trainable_params / budget, 6),
            "method": self.method,
            "head": self.head,
            "target_modules": self.target_modules,
            "layers": self.layers,
            "r": self.r,
            "lora_alpha": self.lora_alpha if self.r is not None else None,
            "use_dora": self.use_dora,
            "size": {SIZES[self.method][0]: self.size} if self.method in SIZES else {},
            "bias": "none",
            "adapted_modules": self.adapted,
            "coverage": round(self.coverage, 6),
            "score": round(self.score, 6),
            # the method's first candidate's accuracy in the equal-budget comparison (budget.measured)
            "measured_accuracy": measured.shipped().accuracy_of(self.method, budget),
            "breakdown": self.breakdown.as_dict(),
            "train_args": self.train_args(model, budget),
        }


def score(coverage: float, r: float) -> float:
    return coverage * r / (r + RANK_HALF_CREDIT)


def layer_subsets(n: int) -> list[Optional[list[int]]]:
    """All layers, then the top 3/4, 1/2, 1/3, 1/4, 2 and 1 blocks: adapters matter most near
    the output for classification (Houlsby et al. 2019, fig. 6; AdaLoRA's rank allocation)."""
    sizes = sorted({n, math.ceil(3 * n / 4), math.ceil(n / 2), math.ceil(n / 3), math.ceil(n / 4), 2, 1}, reverse=True)
    return [None if k == n else list(range(n - k, n)) for k in sizes if 1 <= k <= n]


def target_modules_for(inv: Inventory, role: str, layers: Optional[list[int]]) -> Union[list[str], str]:
    """The shortest peft suffixes that select exactly this role's modules in the chosen blocks."""
    if role == "all" and layers is None:
        return "all-linear"
    return _suffixes(inv, inv.roles[role], layers)


def _suffixes(inv: Inventory, names: list[str], layers: Optional[list[int]]) -> list[str]:
    others = [n for n in inv.block_relative(0) if n not in names]
    if layers is None:  # no layer filter: a suffix must not match anything outside the blocks
        block = f"{inv.block_prefix}."
        others += [k for k in inv.keys if not k.startswith(block) and k != inv.block_prefix
                   and k.split(".")[0] not in inv.head_names]
    chosen: list[str] = []
    for name in names:
        parts = name.split(".")
        pick = name
        for j in range(1, len(parts) + 1):
            suffix = ".".join(parts[-j:])
            if not any(o == suffix or o.endswith("." + suffix) for o in others):
                pick = suffix
                break
        if pick not in chosen:
            chosen.append(pick)
    return chosen


def lora_run_config(head: str, targets: Union[list[str], str], layers: Optional[list[int]], r: int, dora: bool) -> RunConfig:
    """A plain LoRA (or DoRA) configuration with alpha = 2r, as the planner prices it."""
    return RunConfig(
        model=ModelConfig(head=head),
        lora=LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, layers=layers, use_dora=dora, bias="none"),
    )


def _inventories(hf_config: Any, num_labels: int) -> dict[str, Inventory]:
    invs = {}
    for head in HEADS:
        if head == "native" and getattr(hf_config, "model_type", None) not in NATIVE_HEADS:
            continue  # an architecture whose head budgetlora cannot split (core/heads.py)
        inv = module_inventory(hf_config, head, num_labels)
        if inv is None:
            inv = _meta_inventory(hf_config, head, num_labels)
        if inv.roles:
            invs[head] = inv
    return invs


def _meta_inventory(hf_config: Any, head: str, num_labels: int) -> Inventory:
    """For an architecture without an analytic description: read the module tree off a model
    built on the meta device. Candidates planned on it are re-counted by peft (see `plan`)."""
    from budgetlora.modeling import build_on_meta

    model = build_on_meta(hf_config, num_labels, ModelConfig(head=head))
    return inventory_from_model(model, head, getattr(hf_config, "model_type", "?"))


_SECTION_OF = {name: section for name, (section, _) in field_index().items()}
Placement = tuple[str, Union[list[str], str, None], Optional[list[int]], list[str]]  # role, targets, layers, IA3 ff


def placements(method: str, inv: Inventory) -> list[Placement]:
    """Where each method goes: LoRA and DoRA on every role x layer subset; the other module
    adapters on every role of all layers (AdaLoRA spreads its ranks over the layers itself);
    IA3 on keys, values and the feed-forward output as in its paper, or every linear layer;
    bias, layernorm and prompt tuning once (they choose what trains)."""
    if method in WHOLE_MODEL:
        return [("-", None, None, [])]
    roles = [r for r in ROLES if r in inv.roles]
    if method in ("lora", "dora"):
        return [(r, target_modules_for(inv, r, ls), ls, []) for r in roles for ls in layer_subsets(inv.num_layers)]
    if method != "ia3":
        return [(r, target_modules_for(inv, r, None), None, []) for r in roles]
    down = [n for n in inv.linear_in_block() if _block_module(inv, n).in_features > _block_module(inv, n).out_features]
    key_value = [n for n in inv.roles.get("qkv", []) if n not in inv.roles.get("qv", [])[:1]]
    if len(down) != 1 or len(key_value) != 2:
        return [("all", "all-linear", None, [])]
    ff = _suffixes(inv, down, None)
    return [("kv+ffn", _suffixes(inv, key_value + down, None), None, ff), ("all", "all-linear", None, ff)]


def _block_module(inv: Inventory, name: str):
    return inv.by_name[f"{inv.block_prefix}.0.{name}"]


def plan(hf_config: Any, budget: int = DEFAULT_BUDGET, num_labels: int = 4,
         methods: Optional[Sequence[str]] = None) -> tuple[list[Candidate], int]:
    """(candidates strictly under the budget, best first; number of placements tried)."""
    if budget < 1:
        raise ConfigError(f"budget: must be a positive number of parameters, got {budget}")
    methods = list(PLAN_METHODS if methods is None else methods)
    for m in methods:
        if m not in PLAN_METHODS:
            close = closest_match(m, set(PLAN_METHODS))
            raise ConfigError(f"method: plan knows {', '.join(PLAN_METHODS)}, not {m!r}"
                              + (f"; did you mean {close!r}?" if close else ""))
    invs = _inventories(hf_config, num_labels)
    if not invs:
        raise ConfigError(
            f"plan: no numbered encoder blocks found in this {getattr(hf_config, 'model_type', '?')} model; "
            "count a given configuration with --explain instead"
        )
    found: dict[tuple, Candidate] = {}
    tried = 0
    for head, inv in invs.items():
        try:
            n_all = len(analyse(lora_run_config(head, "all-linear", None, 1, False), inv).adapted)
        except NeedsMeta:  # unknown layer types: count the plain linear layers outside the head
            n_all = sum(1 for m in inv.modules if m.kind == "linear" and m.name.split(".")[0] not in inv.head_names)
        for method in methods:
            for place in placements(method, inv):
                tried += 1
                made = _fill(method, head, place, inv, budget, n_all, hf_config, num_labels)
                if made is not None and made[0] not in found:
                    found[made[0]] = made[1]
    return rank(found.values(), budget), tried


def rank(candidates: Iterable[Candidate], budget: Optional[int] = None) -> list[Candidate]:
    """Best first: the linear head's candidates, then each head's by score.

    The linear head first whatever the score: measured on MiniLM before the planner listed other
    methods (`plan --measure 8`, docs/BUDGET.md), every LoRA candidate with BERT's default head (a
    classifier on the frozen pooler) scored 12-15 points below every one with the linear head at
    the same coverage, while the score, blind to the head where both cost the same, ranked two of
    them 2nd and 3rd. Then a method that the equal-budget comparison measured clearly worse at the
    nearest budget (budget.measured) after the others, whatever its score. Ties: plain LoRA before
    DoRA (same rank, cheaper steps on a CPU) and the other methods, then the fuller budget.
    """
    found = measured.shipped()

    def key(c: Candidate) -> tuple:
        worse = budget is not None and found.clearly_worse(c.method, budget)
        return (c.head != "linear", worse, -round(c.score, 9), PLAN_METHODS.index(c.method), -c.trainable_params,
                c.head, ROLES.index(c.role) if c.role in ROLES else len(ROLES))

    return sorted(candidates, key=key)


def _fill(method: str, head: str, place: Placement, inv: Inventory, budget: int, n_all: int, hf_config: Any,
          num_labels: int) -> Optional[tuple[tuple, Candidate]]:
    """The placement at the largest size (rank, vector length, tokens) strictly under the budget,
    keyed for de-duplication; None when even the smallest does not fit or peft would refuse it."""
    role, targets, layers, ff = place
    shell = Candidate(head, role, targets, layers, method, 1, Breakdown(), 0, 0.0, 0.0, ff)

    def count(size: int) -> Analysis:
        shell.size = size
        return analyse(shell.run_config(), inv)

    try:
        one = count(1)
        size = _largest_size(method, one, shell, budget, hf_config) if method in SIZES else 0
        if method in SIZES and size < MIN_SIZE.get(method, 1):
            return None
        final = count(size) if method in SIZES else one
    except (NeedsMeta, ConfigError):
        return None
    shell.size = size
    if not inv.exact:
        final = Analysis(count_on_meta(shell.run_config(), hf_config, num_labels), final.adapted,
                         final.wrapped)
    if final.breakdown.total >= budget:
        return None
    coverage = len(final.adapted) / n_all
    shell.breakdown, shell.adapted, shell.coverage = final.breakdown, len(final.adapted), coverage
    # Rank-r methods are scored at their rank (DoRA's magnitudes and AdaLoRA's singular values
    # are not capacity of their own), the others at the LoRA rank their parameters would buy.
    shell.score = score(coverage, size if method in ("lora", "dora", "adalora") else _lora_equivalent_rank(final))
    return (head, method, tuple(a.name for a in final.adapted), size, tuple(ff)), shell


def _largest_size(method: str, one: Analysis, shell: Candidate, budget: int, hf_config: Any) -> int:
    """The largest size up to the method's cap that keeps the count under the budget. Every
    count but LoKr's is linear in its size (fixed + size x slope), so it is solved exactly;
    LoKr's factors change shape with r, so its sizes are tried from the cap down."""
    cap = SIZES[method][1]
    if method == "prompt":  # the virtual tokens and the texts must fit the position embeddings
        room = prompt_room(hf_config, DataConfig().max_length)
        cap = cap if room is None else min(cap, room)
    if method == "fourierft":  # at most in x out coefficients per module (peft refuses more)
        cap = min([cap] + [a.in_features * a.out_features for a in one.adapted])
    if method == "lokr":
        a_ = one.adapted
        fixed = one.breakdown.total - sum(lokr_params(a.in_features, a.out_features, 1) for a in a_)
        for r in range(cap, 0, -1):
            if fixed + sum(lokr_params(a.in_features, a.out_features, r) for a in a_) < budget:
                return r
        return 0
    slope = _slope(method, one, shell)
    fixed = one.breakdown.total - slope
    return min(cap, (budget - 1 - fixed) // slope) if slope > 0 else 0


def _slope(method: str, one: Analysis, shell: Candidate) -> int:
    """What one more unit of size adds to the count: per adapted module for the module methods
    (priced by budget.methods, as analyse does), the word embeddings' width per virtual token."""
    if method == "prompt":
        return one.breakdown.prompt  # counted at one token
    totals = []
    for size in (1, 2):
        shell.size = size
        run, b = shell.run_config(), Breakdown()
        for a in one.adapted:
            add_module_cost(b, method, run, a.name, size, a.in_features, a.out_features)
        totals.append(b.total)
    shell.size = 1
    return totals[1] - totals[0]


def _lora_equivalent_rank(found: Analysis) -> float:
    """The LoRA rank that the same adapter parameters would buy on the same modules: how the
    score compares methods that spend parameters differently (0 where nothing is adapted)."""
    b = found.breakdown
    adapter = b.total - b.head - b.bias - b.other
    per_rank = sum(a.in_features + a.out_features for a in found.adapted)
    return adapter / per_rank if per_rank else 0.0
