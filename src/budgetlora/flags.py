"""Command-line flags generated from the settings: one flag per config field (`lora_alpha` ->
`--lora-alpha`), with the field's help text. Used by the CLI and by `plan --explain`, which must
read a `train` command line exactly as `train` does."""

from __future__ import annotations

import argparse
import typing
from typing import Any, Optional

from budgetlora.config import field_index, field_type


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (`--lora-alpha`), defaulting to 'not given' so recipes still apply."""
    groups: dict[Optional[str], argparse._ArgumentGroup] = {}
    for name, (section, f) in field_index().items():
        group = groups.get(section)
        if group is None:
            group = groups[section] = parser.add_argument_group(f"{section or 'run'} settings")
        flag = "--" + name.replace("_", "-")
        tp = field_type(name)
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help text
        if tp is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, default=None, metavar=_metavar(tp), help=help_text)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train` command's arguments: a recipe, a run to resume, and every setting."""
    parser.add_argument("--config", metavar="RECIPE", help="YAML recipe; flags given here override it.")
    parser.add_argument("--resume", metavar="DIR", help="Continue an interrupted run from its folder.")
    add_config_flags(parser)


def _metavar(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if tp is int:
        return "N"
    if tp is float:
        return "X"
    return "VALUE"


def config_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The config flags the user actually gave (raw strings; config.coerce types them)."""
    return {name: getattr(ns, name) for name in field_index() if getattr(ns, name, None) is not None}
