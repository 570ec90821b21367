"""Draft algorithms, one folder each (config.py, model.py, loss.py, __init__.py), found by name.

An algorithm owns its draft class (built from the parts in models/), its training knobs and its loss;
`registry.py` holds the interface and `@register`, `io.py` the draft folders (save / load), `build.py`
new drafts from the `modeling` config. Everything else calls `get_algorithm(name)`.
"""

from __future__ import annotations

# Fill the registry: importing an algorithm's folder registers it.
from specforge_het.algorithms import eagle_v2, eagle_v3, standalone  # noqa: F401
from specforge_het.algorithms.registry import (
    DraftAlgorithm,
    algorithm_names,
    algorithm_of,
    default_options,
    get_algorithm,
    register,
)

__all__ = ["DraftAlgorithm", "algorithm_names", "algorithm_of", "default_options", "get_algorithm", "register"]
