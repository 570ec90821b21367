"""Parsing config values by their declared type (CLI text, TOML or JSON values); nothing is evaluated."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from specforge_het.errors import ConfigError

__all__ = ["FALSE", "TRUE", "ConfigError", "coerce", "nearest"]


def nearest(name: str, options) -> str:
    near = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(near)}?" if near else f" Valid: {', '.join(sorted(options))}."


TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _parse_scalar(tp: type, value: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE | FALSE:
            return value.lower() in TRUE
        raise TypeError
    if tp is int:
        if isinstance(value, bool) or isinstance(value, float):
            raise TypeError
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError
        return str(value)
    raise TypeError


def _split_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]  # fire/TOML hand over a lone number
    if isinstance(value, str):
        text = value.strip().removeprefix("[").removesuffix("]").strip()
        return [p.strip().strip("'\"") for p in text.split(",") if p.strip()] if text else []
    raise TypeError


def coerce(key: str, tp: Any, value: Any, choices: tuple[str, ...] | None = None) -> Any:
    """Parse `value` (a CLI string or a TOML/JSON value) as type `tp`, or fail naming key, type and value."""
    try:
        if typing.get_origin(tp) is list:
            (item_tp,) = typing.get_args(tp)
            out = [_parse_scalar(item_tp, v) for v in _split_list(value)]
        else:
            out = _parse_scalar(tp, value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp)) if not isinstance(tp, types.GenericAlias) else str(tp)
        raise ConfigError(f"Config key '{key}' expects {name}, got {value!r}.") from None
    if choices and out not in choices:
        raise ConfigError(f"Config key '{key}' must be one of {list(choices)}, got {out!r}.{nearest(str(out), choices)}")
    return out
