"""Export drafts to serving engines (and import their folders back), one module per format.

    sglang-eagle3  SGLang EAGLE-3 (LlamaForCausalLMEagle3)      sglang_eagle3.py
    speculators    vLLM speculators eagle3 (Eagle3Speculator)   speculators.py
    sglang-eagle   SGLang EAGLE-1/2 (LlamaForCausalLMEagle)     sglang_eagle.py
    eagle          original EAGLE-1/2 checkpoints (eagle-llm)   eagle.py
Every folder written is checked against its format's contract (contract.py) before and after
writing; `check_folder` runs the same check on any folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from specforge_het.export import eagle, sglang_eagle, sglang_eagle3, speculators
from specforge_het.export.common import read_folder, write_folder
from specforge_het.export.contract import ExportError, check_contract, check_vocab_maps, describe_tensors
from specforge_het.models.draft import DraftModel

FORMATS = {
    "sglang-eagle3": sglang_eagle3,
    "speculators": speculators,
    "sglang-eagle": sglang_eagle,
    "eagle": eagle,
}
__all__ = ["FORMATS", "ExportError", "to_state_dict", "export_draft", "from_state_dict", "import_folder",
           "check_folder", "check_contract"]


def _module(fmt: str):
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def to_state_dict(draft: DraftModel, fmt: str, dtype: torch.dtype | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, {name: tensor}) of `draft` (attached to its base) in format `fmt`; refuses with reasons."""
    return _module(fmt).to_state_dict(draft, dtype)


def export_draft(draft: DraftModel, out_dir: str | Path, fmt: str, dtype: torch.dtype | None = None) -> Path:
    """Write `draft` as an engine folder (config.json + model.safetensors), contract-checked."""
    config, state = to_state_dict(draft, fmt, dtype)
    return write_folder(out_dir, fmt, config, state)


def from_state_dict(fmt: str, config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    """An engine folder's config + tensors back into our DraftModel attached to `base`."""
    problems = check_folder_contents(fmt, config, state)
    if problems:
        raise ExportError(f"not a valid '{fmt}' folder:\n  - " + "\n  - ".join(problems))
    return _module(fmt).from_state_dict(config, state, base)


def import_folder(folder: str | Path, fmt: str, base) -> DraftModel:
    config, state = read_folder(folder)
    return from_state_dict(fmt, config, state, base)


def check_folder_contents(fmt: str, config: dict, state: dict[str, torch.Tensor]) -> list[str]:
    if fmt == "eagle":  # originals may leave out keys EConfig defaults
        config = eagle.normalise_eagle_config(config, state)
    problems = check_contract(fmt, config, describe_tensors(state))
    if not problems and "d2t" in state:
        problems = check_vocab_maps(state["d2t"], state["t2d"], len(state["t2d"]))
    return problems


def check_folder(folder: str | Path, fmt: str) -> list[str]:
    """Every contract violation of an engine folder (empty = it loads as meant)."""
    _module(fmt)
    config, state = read_folder(folder)
    return check_folder_contents(fmt, config, state)
