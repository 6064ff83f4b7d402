"""`budgetlora.modeling` re-exports its public names lazily; the list it resolves at run time and
the imports that type checkers read must name the same things."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import budgetlora.modeling as modeling


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(Path(modeling.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    return {a.name: node.module for node in block.body for a in node.names}


def test_every_public_name_resolves_from_its_module():
    declared = _type_checking_imports()
    assert sorted(declared) == modeling.__all__
    for name, module in declared.items():
        assert getattr(modeling, name) is getattr(importlib.import_module(module), name)


def test_the_old_model_card_import_path_names_the_same_functions():
    from budgetlora.model import build_classifier, load_trained

    assert load_trained is modeling.load_trained and build_classifier is modeling.build_classifier


def test_reading_the_family_records_imports_no_model_code():
    code = ("import json, sys, budgetlora.modeling.architectures\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('budgetlora.modeling'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["budgetlora.modeling", "budgetlora.modeling.architectures",
                               "budgetlora.modeling.inventory"]
