"""Presets (`--@name`): every top-level table of every `*.toml` file is one preset.

The shipped files (bases, algorithms, pairs, trees, hardware) are package data in this folder,
read with importlib.resources, so a wheel install finds them as an editable one does. Your own
presets: put `*.toml` files in a folder and name it in $SPECFORGE_HET_PRESETS (several folders
separated by the path separator, ':' on Linux). They are read after the shipped files; a name
defined twice, shipped or not, is refused with both files named.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from specforge_het.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python >= 3.11; annotations only

USER_ENV = "SPECFORGE_HET_PRESETS"


def _tomls(folder: Traversable) -> list[Traversable]:
    return sorted((p for p in folder.iterdir() if p.name.endswith(".toml") and p.is_file()), key=lambda p: p.name)


def user_folders() -> list[Path]:
    """The folders named in $SPECFORGE_HET_PRESETS; a missing one is refused."""
    folders = [Path(x).expanduser() for x in os.environ.get(USER_ENV, "").split(os.pathsep) if x.strip()]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"${USER_ENV}: '{folder}' is not a folder. Name folders of *.toml preset files there.")
    return folders


def preset_files(directory: Path | None = None) -> list[Traversable]:
    """`directory`'s *.toml files when given; else the shipped files, then those of the user folders."""
    if directory is not None:
        return list(_tomls(Path(directory)))
    files = _tomls(resources.files(__name__))
    for folder in user_folders():
        files += _tomls(folder)
    return files


def _read(path: Traversable) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def merge_presets(files: Iterable[Traversable]) -> dict[str, dict[str, Any]]:
    """{name: body} over `files`, in order; a name in two files is an error."""
    presets: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for path in files:
        for name, body in _read(path).items():
            if name in presets:
                raise ConfigError(f"Preset '{name}' is defined twice: {origin[name]} and {path}.")
            presets[name], origin[name] = body, str(path)
    return presets


def load_presets(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """All presets: the shipped ones and the user folders' (or only `directory`'s, when given)."""
    return merge_presets(preset_files(directory))
