"""The package's size rules (architecture issue): files under 400 lines, functions under 50 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "specforge_het"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 50


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_files_under_400_lines() -> None:
    long = [f"{p.relative_to(REPO)} ({n})" for p in _sources() if (n := len(p.read_text().splitlines())) >= MAX_FILE_LINES]
    assert not long, f"split these files: {long}"


def test_functions_under_50_lines() -> None:
    long = []
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({n})")
    assert not long, f"split these functions: {long}"


def test_the_rules_see_the_package() -> None:
    assert len(_sources()) > 50  # a wrong root would make both checks pass vacuously
