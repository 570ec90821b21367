"""Where the base's weights live: one device, or sharded by a HF device map over several.

`--modeling.device_map auto` (or balanced, balanced_low_0, sequential) hands placement to
HF/accelerate (`from_pretrained(device_map=..., max_memory=...)`): layers are spread over the
GPUs (then CPU, then disk) within `--modeling.max_memory`'s budgets, and accelerate hooks move
activations between them. Such a base is *sharded* when its map names more than one device (or
offloads to disk): the lean forward then steps aside and HF's forward runs (the hooks only act when
HF calls the layers; see `BaseModel.sharded`). The draft sits on the device of the base's last layer.

`--modeling.max_memory` is parsed here, never evaluated: `0=17.5GiB,1=17GiB,cpu=30GiB`.
`free_memory(device)` says how many bytes are free there (gen_dataset's K/V cache warning uses it).
"""

from __future__ import annotations

import importlib.util
import re

import torch
from torch import nn

from specforge_het.config import ConfigError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG]i?B)?$", re.IGNORECASE)
_UNITS = {"KB": "KB", "MB": "MB", "GB": "GB", "KIB": "KiB", "MIB": "MiB", "GIB": "GiB"}
_KEY = re.compile(r"^(\d+|cpu|disk|mps|xpu:\d+|npu:\d+)$")
_EXAMPLE = "for example --modeling.max_memory 0=17.5GiB,1=17GiB,cpu=30GiB"


def parse_max_memory(text: str) -> dict[int | str, str | int]:
    """'0=17.5GiB,1=17GiB,cpu=30GiB' -> {0: '17.5GiB', 1: '17GiB', 'cpu': '30GiB'}; '' -> {}.

    Keys: a GPU index (0, 1, ...), cpu, disk (or mps, xpu:N, npu:N); values: a number with a unit (KB, MB,
    GB = powers of 10; KiB, MiB, GiB = powers of 2; any case, written back in accelerate's spelling, where a
    lower-case 'b' would mean bits), or a bare integer: bytes, returned as an int.
    """
    out: dict[int | str, str | int] = {}
    text = (text or "").strip()
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--modeling.max_memory: '{item}' is not DEVICE=SIZE ({_EXAMPLE}).")
        if not _KEY.match(key):
            raise ConfigError(f"--modeling.max_memory: unknown device '{key}' in '{item}': use a GPU index (0, 1, ...), "
                              f"cpu or disk ({_EXAMPLE}).")
        size = _SIZE.match(value)
        if size is None or (size.group(2) is None and not value.isdigit()):
            raise ConfigError(f"--modeling.max_memory: '{value}' for device '{key}' is not a size such as 17.5GiB, "
                              f"500MB or a byte count ({_EXAMPLE}).")
        parsed_key: int | str = int(key) if key.isdigit() else key
        if parsed_key in out:
            raise ConfigError(f"--modeling.max_memory names device '{key}' twice: give each device one budget.")
        out[parsed_key] = int(value) if value.isdigit() else size.group(1) + _UNITS[size.group(2).upper()]
    return out


def placement_kwargs(device_map: str, max_memory: str) -> dict:
    """The `from_pretrained` keywords for --modeling.device_map / --modeling.max_memory ({} = not sharded:
    the caller moves the model to --modeling.device itself)."""
    device_map = (device_map or "").strip()
    budgets = parse_max_memory(max_memory)
    if not device_map:
        if budgets:
            raise ConfigError("--modeling.max_memory needs --modeling.device_map (e.g. auto): the budgets only "
                              "bound HF's placement of a sharded base.")
        return {}
    if device_map not in DEVICE_MAPS:
        raise ConfigError(f"--modeling.device_map '{device_map}' is not one of {list(DEVICE_MAPS)} ('' = the whole "
                          "base on --modeling.device).")
    if importlib.util.find_spec("accelerate") is None:
        raise ConfigError("--modeling.device_map needs the accelerate package: pip install 'accelerate>=1.0'.")
    out: dict = {"device_map": device_map}
    if budgets:
        out["max_memory"] = budgets
    return out


def map_devices(model: nn.Module) -> set:
    """The distinct devices of the model's HF device map (empty when it was not loaded with one)."""
    return set((getattr(model, "hf_device_map", None) or {}).values())


def is_sharded(model: nn.Module) -> bool:
    """True when HF placed the model over several devices, or offloaded part of it to disk."""
    devices = map_devices(model)
    return len(devices) > 1 or "disk" in devices


def _as_device(value) -> torch.device | None:
    if value is None or value == "disk":
        return None
    if isinstance(value, int):
        return torch.device("cuda", value)
    return torch.device(value)


def run_device(model: nn.Module, module: nn.Module) -> torch.device | None:
    """Where `module` (a sub-module of `model`) computes: its accelerate hook's execution device, else the
    device-map entry covering it, else the device of its first real (non-meta) parameter."""
    hooks = [getattr(module, "_hf_hook", None)]
    hooks += list(getattr(hooks[0], "hooks", ()) or ())
    for hook in hooks:
        device = _as_device(getattr(hook, "execution_device", None))
        if device is not None:
            return device
    dmap = getattr(model, "hf_device_map", None) or {}
    name = next((n for n, m in model.named_modules() if m is module), None)
    if name is not None:
        covering = [k for k in dmap if k == "" or name == k or name.startswith(k + ".")]
        if covering:
            device = _as_device(dmap[max(covering, key=len)])
            if device is not None:
                return device
    return next((p.device for p in module.parameters() if p.device.type != "meta"), None)


def free_memory(device) -> int | None:
    """Bytes free on `device`: CUDA's free memory, or MemAvailable on a Linux CPU; None where unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
