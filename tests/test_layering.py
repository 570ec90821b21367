"""The package's import order, checked from the source with `ast` (no imports run).

    config <- models <- inference <- algorithms <- {bench, training, data, export, doctor, drafts} <- entry points

A module may import its own layer and the layers before it, never a later one. Imports inside
functions count; imports under `if TYPE_CHECKING:` do not (they never run). The model layer also
must not import config.py's command-line schema (the dataclasses): only `ConfigError` from there.
And no two modules may import each other, directly or through others.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "specforge_het"

# First part of a module's name below specforge_het -> its layer. A new package or top-level module
# must be placed here (test_every_module_has_a_layer).
LAYERS: dict[str, int] = {
    "__init__": 0, "config": 0, "config_values": 0, "errors": 0, "presets": 0, "chat": 0, "assets": 0,  # foundation
    "models": 1,
    "inference": 2,
    "algorithms": 3,
    "bench": 4, "training": 4, "data": 4, "export": 4, "doctor": 4, "drafts": 4, "evaluate": 4,
    "testing": 4,  # tiny models and oracle proposers for the tests: built on inference
    "cli": 5, "train": 5, "data_gen": 5,  # entry points, with every `*/__main__.py`
}
ENTRY = 5
# Modules run with `python -m` (a `__main__` guard) that live inside a package rather than as its
# __main__.py: they are entry points too.
EXTRA_ENTRY_POINTS = {"specforge_het.training.bench", "specforge_het.doctor.engine_probe"}
# What the model layer may take from config.py: the error, not the command-line schema.
MODELS_MAY_USE_FROM_CONFIG = {"ConfigError"}

# Violations that exist today, as "importer -> imported". The list may only shrink: a violation that
# is gone must be deleted here (test_known_violations_still_exist), and a new one fails at once.
KNOWN_VIOLATIONS: set[str] = set()
# Import cycles that exist today (besides those through KNOWN_VIOLATIONS), each as its sorted modules.
# Same rule: the list may only shrink.
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = ["specforge_het", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The module's layer; -1 when LAYERS does not place it (test_every_module_has_a_layer says so)."""
    parts = module.split(".")
    if module in EXTRA_ENTRY_POINTS or parts[-1] == "__main__":
        return ENTRY
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__", -1)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def raw_imports(module: str) -> list[tuple[str, int]]:
    path = modules()[module]
    return imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted name, line) of every import of ours that runs: `import a.b` -> a.b, `from a import b` -> a.b."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(node, module, is_package)
            out.extend((f"{origin}.{alias.name}", node.lineno) for alias in node.names)
        visit(node)

    visit(ast.parse(source))
    return [(name, line) for name, line in out if name.split(".")[0] == "specforge_het"]


def target_module(name: str) -> str:
    """The module an imported dotted name lives in (a.b.func -> a.b)."""
    while name not in modules():
        name = name.rpartition(".")[0]
    return name


@cache
def edges() -> dict[str, set[str]]:
    """module -> the package modules it imports (itself and the bare root excluded)."""
    graph = {}
    for module in modules():
        graph[module] = {t for t in (target_module(n) for n, _ in raw_imports(module)) if t not in (module, "specforge_het")}
    return graph


def layer_violations() -> dict[str, int]:
    """'importer -> imported' for every import of a later layer, with the first line it is on."""
    found: dict[str, int] = {}
    for module in modules():
        for name, line in raw_imports(module):
            target = target_module(name)
            if target != "specforge_het" and layer_of(target) > layer_of(module) >= 0:
                found.setdefault(f"{module} -> {target}", line)
    return found


def schema_violations() -> dict[str, int]:
    """'models.x -> specforge_het.config.Name' for every model-layer use of config.py beyond ConfigError."""
    found: dict[str, int] = {}
    for module in modules():
        if layer_of(module) != LAYERS["models"]:
            continue
        for name, line in raw_imports(module):
            if target_module(name) == "specforge_het.config":
                if name == "specforge_het.config" or name.rpartition(".")[2] not in MODELS_MAY_USE_FROM_CONFIG:
                    found.setdefault(f"{module} -> {name}", line)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _listing(found: dict[str, int]) -> str:
    return "\n".join(f"  {v} (line {found[v]})" for v in sorted(found))


# ---------------------------------------------------------------- the tests


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({m.split(".")[1] for m in modules() if "." in m} - set(LAYERS))
    assert not unplaced, f"place these in LAYERS of tests/test_layering.py: {unplaced}"


def test_no_module_imports_a_later_layer() -> None:
    new = {v: line for v, line in {**layer_violations(), **schema_violations()}.items() if v not in KNOWN_VIOLATIONS}
    assert not new, ("imports against the layer order config <- models <- inference <- algorithms <- "
                     "{bench, training, data, export, doctor, drafts} <- entry points:\n" + _listing(new))


def test_known_violations_still_exist() -> None:
    gone = KNOWN_VIOLATIONS - set(layer_violations()) - set(schema_violations())
    assert not gone, f"fixed, so delete from KNOWN_VIOLATIONS in tests/test_layering.py: {sorted(gone)}"


def test_no_import_cycles() -> None:
    known = {tuple(v.split(" -> ")) for v in KNOWN_VIOLATIONS}
    found = cycles({m: {t for t in targets if (m, t) not in known} for m, targets in edges().items()})
    new = [c for c in found if c not in KNOWN_CYCLES]
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not new, f"modules that import each other (directly or through others): {new}"
    assert not gone, f"no longer a cycle, so delete from KNOWN_CYCLES in tests/test_layering.py: {gone}"


SAMPLE = """
import os
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import specforge_het.train
else:
    import specforge_het.chat
def f():
    from specforge_het.inference import decoder
from . import lean
from ..config import ConfigError
"""


def test_the_checker_sees_what_it_must() -> None:
    """Negative controls: imports inside functions and relative ones count, TYPE_CHECKING ones do not;
    the cycle finder finds a cycle; `__main__` modules are entry points."""
    assert imports_in(SAMPLE, "specforge_het.models.base", False) == [
        ("specforge_het.chat", 7), ("specforge_het.inference.decoder", 9), ("specforge_het.models.lean", 10),
        ("specforge_het.config.ConfigError", 11)]
    assert imports_in("from . import base\n", "specforge_het.models", True) == [("specforge_het.models.base", 1)]
    assert target_module("specforge_het.inference.decoder.Decoder") == "specforge_het.inference.decoder"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("specforge_het.bench.__main__") == ENTRY and layer_of("specforge_het.models.base") == 1
