"""Reader of the original EAGLE trainer's offline data, so those folders train like our own.

One `.ckpt` file per conversation, a `torch.save` dict of exactly three tensors:

    input_ids    [T] or [1, T]        token ids of the base model
    hidden_state [T, H] or [1, T, H]  base last-layer features
    loss_mask    [T] or [1, T]        1 on the assistant's tokens

Files are opened with `torch.load(..., weights_only=True)` only: a file that needs unpickling of
anything but tensors and plain containers is refused, never executed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from specforge_het.data.report import BadInputReport

KEYS = ("input_ids", "hidden_state", "loss_mask")
SUFFIX = ".ckpt"


class EagleFormatError(ValueError):
    """An EAGLE data file that is not what the format promises; the message names the file."""


def _why(e: Exception) -> str:
    """The informative line of a torch.load error (torch's own advice to load unsafely is left out)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in str(e).splitlines() if x.strip()]
    for line in lines:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", line)
        if found:
            return f"it holds a pickled object of class {found.group(1)}"
    return (lines[0] if lines else type(e).__name__)[:200]


def _load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (non-tensor objects), truncated or foreign files
        raise EagleFormatError(
            f"{path}: refused: not a plain tensor file that torch.load(weights_only=True) can read ({_why(e)}). "
            "EAGLE data files hold only tensors; regenerate this file with the EAGLE data script"
        ) from None


def _squeeze(path: Path, name: str, t: Any, dims: int) -> torch.Tensor:
    """Drop a leading batch dimension of size 1; check the number of dims."""
    if not isinstance(t, torch.Tensor):
        raise EagleFormatError(f"{path}: wrong type: '{name}' is a {type(t).__name__}, expected a tensor")
    if t.dim() == dims + 1 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != dims:
        want = " x ".join(["T", "H"][:dims])
        raise EagleFormatError(f"{path}: wrong shape: '{name}' has shape {list(t.shape)}, expected [{want}] (or [1 x {want}])")
    return t


def read_eagle_file(path: str | Path) -> dict[str, torch.Tensor]:
    """{input_ids [T] long, hidden_state [T, H] float, loss_mask [T] long} of one EAGLE `.ckpt` file.

    Raises EagleFormatError (naming the file) for anything else: not a dict, other keys, wrong
    dims or dtypes, lengths that differ, a loss mask with values other than 0/1.
    """
    path = Path(path)
    data = _load(path)
    if not isinstance(data, dict):
        raise EagleFormatError(f"{path}: not a dict: holds a {type(data).__name__}, expected a dict with keys {', '.join(KEYS)}")
    if set(data) != set(KEYS):
        raise EagleFormatError(f"{path}: wrong keys: has {sorted(map(str, data))}, expected exactly {list(KEYS)}")
    ids = _squeeze(path, "input_ids", data["input_ids"], 1)
    hidden = _squeeze(path, "hidden_state", data["hidden_state"], 2)
    mask = _squeeze(path, "loss_mask", data["loss_mask"], 1)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise EagleFormatError(f"{path}: wrong dtype: input_ids has dtype {ids.dtype}, expected integer token ids")
    if not hidden.dtype.is_floating_point:
        raise EagleFormatError(f"{path}: wrong dtype: hidden_state has dtype {hidden.dtype}, expected floating point features")
    lengths = {"input_ids": ids.shape[0], "hidden_state": hidden.shape[0], "loss_mask": mask.shape[0]}
    if len(set(lengths.values())) != 1:
        raise EagleFormatError(f"{path}: length mismatch: {lengths}; all three must have the same T")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise EagleFormatError(f"{path}: bad loss_mask: values other than 0 and 1")
    return {"input_ids": ids.long(), "hidden_state": hidden, "loss_mask": mask.long()}


def eagle_files(folder: str | Path) -> list[Path]:
    """The `.ckpt` files under `folder` (recursively), sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"EAGLE data folder '{root}' not found")
    files = sorted(root.rglob(f"*{SUFFIX}"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise FileNotFoundError(f"no {SUFFIX} files under '{root}'; an EAGLE data folder holds one .ckpt per conversation")
    return files


def iter_eagle_folder(folder: str | Path, report: BadInputReport) -> Iterator[dict]:
    """Rows `{id, input_ids, loss_mask, features [T, H]}` of an EAGLE folder, sorted by path.

    `id` is the file's path relative to `folder`. Bad files, and files whose hidden size differs
    from the first good file's, go to `report` and are skipped.
    """
    root = Path(folder)
    hidden_size = None
    for path in eagle_files(root):
        try:
            data = read_eagle_file(path)
        except EagleFormatError as e:
            report.add(str(path), 0, str(e).removeprefix(f"{path}: "))
            continue
        h = data["hidden_state"].shape[1]
        hidden_size = h if hidden_size is None else hidden_size
        if h != hidden_size:
            report.add(str(path), 0, f"hidden size mismatch: {h}, the folder's first file has {hidden_size}")
            continue
        yield {"id": path.relative_to(root).as_posix(), "input_ids": data["input_ids"].tolist(),
               "loss_mask": data["loss_mask"].tolist(), "features": data["hidden_state"]}


def eagle_folder_meta(folder: str | Path) -> dict[str, int]:
    """{"hidden_size": H of the first readable file, "rows": number of .ckpt files} (files are not all read)."""
    files = eagle_files(folder)
    for path in files:
        try:
            return {"hidden_size": int(read_eagle_file(path)["hidden_state"].shape[1]), "rows": len(files)}
        except EagleFormatError:
            continue
    raise EagleFormatError(f"{folder}: none of its {len(files)} {SUFFIX} files is a valid EAGLE data file")
