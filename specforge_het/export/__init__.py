"""Export drafts to serving engines (and import their folders back), one module per format.

    sglang-eagle3  SGLang EAGLE-3 (LlamaForCausalLMEagle3)      sglang_eagle3.py
    speculators    vLLM speculators eagle3 (Eagle3Speculator)   speculators.py
    sglang-eagle   SGLang EAGLE-1/2 (LlamaForCausalLMEagle)     sglang_eagle.py
    eagle          original EAGLE-1/2 checkpoints (eagle-llm)   eagle.py
Every folder written is checked against its format's contract (contract.py) before and after
writing; `check_folder` runs the same check on any folder. Context length and rope come from the
base and the draft (common.context_and_rope); the base is named the way engines load it
(`verifier`: a Hub id or folder, never an embedded alias). Folders that only some engine versions
accept are refused unless `force`; what merely depends on them raises an ExportWarning.
"""

from __future__ import annotations

from pathlib import Path

import torch

from specforge_het.export import eagle, sglang_eagle, sglang_eagle3, speculators
from specforge_het.export.common import ExportOptions, read_folder, write_folder
from specforge_het.export.contract import ExportError, ExportWarning, check_contract, check_vocab_maps, describe_tensors
from specforge_het.models.draft import DraftModel

FORMATS = {
    "sglang-eagle3": sglang_eagle3,
    "speculators": speculators,
    "sglang-eagle": sglang_eagle,
    "eagle": eagle,
}
__all__ = ["FORMATS", "ExportError", "ExportWarning", "ExportOptions", "to_state_dict", "export_draft",
           "from_state_dict", "import_folder", "check_folder", "check_contract"]


def _module(fmt: str):
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def to_state_dict(draft: DraftModel, fmt: str, dtype: torch.dtype | None = None, *, verifier: str = "",
                  force: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, {name: tensor}) of `draft` (attached to its base) in format `fmt`; refuses with reasons.
    verifier: the base as engines load it (Hub id or folder); force: write what only some engine versions accept."""
    return _module(fmt).to_state_dict(draft, dtype, ExportOptions(verifier=verifier, force=force))


def export_draft(draft: DraftModel, out_dir: str | Path, fmt: str, dtype: torch.dtype | None = None, *,
                 verifier: str = "", force: bool = False) -> Path:
    """Write `draft` as an engine folder (config.json + model.safetensors), contract-checked."""
    config, state = to_state_dict(draft, fmt, dtype, verifier=verifier, force=force)
    return write_folder(out_dir, fmt, config, state)


def from_state_dict(fmt: str, config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    """An engine folder's config + tensors back into our DraftModel attached to `base`."""
    problems = check_folder_contents(fmt, config, state, base)
    if problems:
        raise ExportError(f"not a valid '{fmt}' folder:\n  - " + "\n  - ".join(problems))
    return _module(fmt).from_state_dict(config, state, base)


def import_folder(folder: str | Path, fmt: str, base) -> DraftModel:
    config, state = read_folder(folder)
    return from_state_dict(fmt, config, state, base)


def check_folder_contents(fmt: str, config: dict, state: dict[str, torch.Tensor], base=None) -> list[str]:
    normalise = getattr(_module(fmt), "normalise_config", None)
    if normalise is not None:  # keys the engine defaults when absent (EAGLE's EConfig; SGLang's target_hidden_size)
        config = normalise(config, state, base)
    problems = check_contract(fmt, config, describe_tensors(state))
    if not problems and "d2t" in state:
        problems = check_vocab_maps(state["d2t"], state["t2d"], len(state["t2d"]))
    return problems


def check_folder(folder: str | Path, fmt: str) -> list[str]:
    """Every contract violation of an engine folder (empty = it loads as meant)."""
    _module(fmt)
    config, state = read_folder(folder)
    return check_folder_contents(fmt, config, state)
