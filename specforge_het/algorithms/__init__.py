"""Draft algorithms, one file each, found by name through this registry.

An algorithm decides how a draft reads base features and its own outputs, and (for
training) its loss. The decoder loop and the trainer only ever call `get_algorithm(name)`.
"""

from __future__ import annotations

import difflib

from specforge_het.algorithms.base import DraftAlgorithm

_REGISTRY: dict[str, type[DraftAlgorithm]] = {}


def register(name: str):
    def deco(cls: type[DraftAlgorithm]) -> type[DraftAlgorithm]:
        if name in _REGISTRY:
            raise ValueError(f"algorithm '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_algorithm(name: str) -> DraftAlgorithm:
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f" Did you mean {near[0]}?" if near else ""
        raise ValueError(f"Unknown draft algorithm '{name}'. Registered: {sorted(_REGISTRY)}.{hint}")
    return _REGISTRY[name]()


def algorithm_names() -> list[str]:
    return sorted(_REGISTRY)


from specforge_het.algorithms import eagle_v2, eagle_v3  # noqa: E402,F401  (fill the registry)
