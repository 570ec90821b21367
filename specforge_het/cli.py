"""Shared entry point of every `python -m specforge_het.<module>` command.

Presets (`--@name`), dotted overrides (`--section.key value`) and `--use_saved_json_config`
are taken out of argv and resolved into a typed Config; the rest goes to python-fire.
The verb `show` prints the resolved config as a rich table.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import fire
from rich.console import Console
from rich.table import Table

from specforge_het.config import Config, ConfigError, resolve
from specforge_het.config_values import FALSE, TRUE

console = Console(stderr=True)


def config_table(cfg: Config, presets: list[str], sections: tuple[str, ...] | None = None) -> Table:
    table = Table(title=f"resolved config (presets: {' '.join('@' + p for p in presets) or 'none'})")
    for col in ("key", "value", "default", "help"):
        table.add_column(col, overflow="fold")
    default = Config()
    for section in sections or cfg.section_names():
        obj, ref = getattr(cfg, section), getattr(default, section)
        for f in dataclasses.fields(obj):
            value, dflt = getattr(obj, f.name), getattr(ref, f.name)
            style = "bold green" if value != dflt else ""
            table.add_row(f"{section}.{f.name}", repr(value), repr(dflt), f.metadata.get("help", ""), style=style)
    return table


def as_flag(name: str, value: Any) -> bool:
    """A verb's boolean flag from the command line: fire passes `--flag false` as the string 'false'
    (truthy), so strings are read as the config reads them; anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).lower() in TRUE | FALSE:
        return str(value).lower() in TRUE
    raise ConfigError(f"--{name} {value!r}: give true or false (e.g. --{name}=false, or --no{name}).")


def read_flags(sig: inspect.Signature, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """(args, kwargs) as fire passed them for `sig`, with every bool-annotated parameter read by `as_flag`
    (fire may pass a flag's value by position or by name)."""
    flags = [p.name for p in sig.parameters.values() if p.annotation in (bool, "bool")]
    if not flags:
        return args, kwargs
    bound = sig.bind(*args, **kwargs)
    for name in flags:
        if name in bound.arguments:
            bound.arguments[name] = as_flag(name, bound.arguments[name])
    return bound.args, bound.kwargs


def bind_config(fn: Callable[..., Any], cfg: Config, presets: list[str]) -> Callable[..., Any]:
    """`fn(cfg, presets, **kwargs)` as a fire-friendly function of **kwargs only."""

    sig = inspect.Signature(list(inspect.signature(fn).parameters.values())[2:])

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args, kwargs = read_flags(sig, args, kwargs)
        return fn(cfg, presets, *args, **kwargs)

    wrapper.__signature__ = sig  # type: ignore[attr-defined]
    return wrapper


def run_cli(component: Callable[..., Any] | dict[str, Callable[..., Any]], name: str, argv: list[str] | None = None) -> Any:
    """Resolve the config from argv, then hand the rest to fire.

    `component` is one function `fn(cfg, presets, **flags)` or a dict of such verbs.
    """
    import specforge_het.algorithms  # noqa: F401  (each draft algorithm registers its config section)

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, presets, rest = resolve(argv)
    except ConfigError as e:
        console.print(f"[bold red]config error:[/] {e}")
        raise SystemExit(2) from None
    if rest[:1] == ["show"]:
        Console().print(config_table(cfg, presets))
        return cfg
    if callable(component):
        target: Any = bind_config(component, cfg, presets)
    else:
        target = {verb: bind_config(fn, cfg, presets) for verb, fn in component.items()}
    try:
        return fire.Fire(target, command=rest, name=name)
    except ConfigError as e:
        console.print(f"[bold red]config error:[/] {e}")
        raise SystemExit(2) from None
