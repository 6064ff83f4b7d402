"""The package's floors: each module imports only from its own layer or below, and no import
circle exists among its modules. Imports inside functions count like any other: hiding an
upward import in a function still makes the lower floor depend on the upper one."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "budgetlora"

# Longest prefix wins. Bottom to top: settings, core utilities, data and modeling, budget and
# inference, training, commands, the CLI.
LAYERS = {
    "budgetlora": 0,  # the package's own __init__: a version string, nothing else
    "budgetlora.errors": 0,
    "budgetlora.config": 0,
    "budgetlora.flags": 0,
    "budgetlora.core": 1,
    "budgetlora.data": 2,
    "budgetlora.modeling": 2,
    "budgetlora.model": 2,  # the model card's old import path, an alias of modeling.run_model
    "budgetlora.budget": 3,
    "budgetlora.inference": 3,
    "budgetlora.training": 4,
    "budgetlora.commands": 5,
    "budgetlora.cli": 6,
    "budgetlora.__main__": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer_of(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len, default=None)
    assert best is not None, f"{name}: no layer assigned; add it to LAYERS"
    return LAYERS[best]


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its body."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` names a module when sub is one, else a name in pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("budgetlora") and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer():
    for name in all_modules():
        layer_of(name)


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{m} (L{layer_of(m)}) imports {t} (L{layer_of(t)})"
              for m, targets in import_graph().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_circle_and_an_upward_import():
    graph = {"budgetlora.core.a": {"budgetlora.core.b"}, "budgetlora.core.b": {"budgetlora.core.a"}}
    assert find_cycles(graph) == [["budgetlora.core.a", "budgetlora.core.b"]]
    assert layer_of("budgetlora.training.loop") > layer_of("budgetlora.inference.runner")
