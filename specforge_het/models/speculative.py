"""Deprecated: draft folders are saved and loaded by specforge_het.algorithms.io (the one draft loader).

This module only re-exports its names, on use, for callers outside models/ that still import them from
here; importing it never imports algorithms/. Import from specforge_het.algorithms.io instead.
"""

from __future__ import annotations

_MOVED = ("FORMAT", "FORMAT_VERSION", "WEIGHTS", "git_sha", "provenance", "save_draft", "read_draft_config",
          "load_draft", "draft_parameter_counts")


def __getattr__(name: str):
    if name in _MOVED:
        from specforge_het.algorithms import io  # deprecated shim (see tests/test_layering.py)

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
