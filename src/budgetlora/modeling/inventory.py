"""The module inventory: the leaf modules a classifier is built of, as names and shapes.

It lets the budget replay peft's rules on module names without building a model. The families in
`architectures` write it from a config; `budget.inventory_from_model` reads it off a built model.
No torch import here: `plan` prices hundreds of candidates from a config alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional


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


def linear(name: str, i: int, o: int, bias: bool = True) -> Module:
    return Module(name, "linear", i, o, i * o, o if bias else 0)


def embedding(name: str, n: int, d: int) -> Module:
    return Module(name, "embedding", n, d, n * d, 0)


def norm(name: str, d: int) -> Module:
    return Module(name, "norm", d, d, d, d)


def no_params(name: str) -> Module:
    # Modules without parameters still matter: a target that matches one makes peft refuse.
    return Module(name, "none", 0, 0, 0, 0)


# peft's layer index: the first number that follows a dotted name segment ("....layer.3.")
LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


@dataclass
class Inventory:
    """The leaf modules of one architecture + head, and the names derived from them."""

    model_type: str
    head: str  # "default" | "linear"
    modules: list[Module]
    head_names: list[str]  # top-level modules that make the head (modeling.head_module_names)
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
            match = LAYER_INDEX.match(k)
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

    def linear_in_block(self) -> list[str]:
        """Block-relative names of the first block's linear modules."""
        return [n for n in self.block_relative(0)
                if getattr(self.by_name.get(f"{self.block_prefix}.0.{n}"), "kind", None) == "linear"]
