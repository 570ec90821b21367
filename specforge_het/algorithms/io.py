"""Draft folders: the one place drafts are saved, read and built from a config.json.

A draft folder holds:
  config.json       {"format": "specforge_het.draft", "format_version": 1, "algorithm": NAME, ...DraftConfig}
  model.safetensors the draft's own weights and vocabulary buffers (never base weights)
  tokenizer files   the draft tokenizer, when the vocabulary is foreign
  provenance.json   git sha, argv, package versions, time (+ what the writer adds)
Loading dispatches on config.json's "algorithm" through the registry (its draft class) and resolves
layer classes through the family registry; no remote code is run. Every folder written since format
version 1 loads unchanged (the shipped drafts in specforge_het/drafts/ are such folders).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from specforge_het.algorithms.registry import algorithm_names, get_algorithm
from specforge_het.assets import resolve_draft_path
from specforge_het.models.adapters import VocabAdapter
from specforge_het.models.draft import DraftConfig, DraftModel, check_base_matches

FORMAT = "specforge_het.draft"
FORMAT_VERSION = 1  # bump when config.json or the tensor names change; loading refuses newer versions
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class DraftFolderError(ValueError):
    """A folder that is not a draft folder this version can load; the message says why and what to do."""


def git_sha() -> str:
    try:
        # S607: `git` from PATH on purpose (provenance only); fixed argv, no shell, no user input.
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,  # noqa: S607
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    versions = {}
    for pkg in ("specforge_het", "torch", "transformers", "peft", "safetensors", "datasets"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_sha": git_sha(), "argv": sys.argv, "versions": versions, "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {}),
    }


def save_draft(draft: DraftModel, folder: str | Path, extra_provenance: dict[str, Any] | None = None,
               state: dict[str, Any] | None = None) -> Path:
    """Write a draft folder. `state`: the weights to write (LoRA merged) instead of the draft's own
    (a trainer under FSDP / DeepSpeed passes the gathered full state while the module holds shards)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in (draft.trainable_state_dict() if state is None else state).items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT})
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, **draft.cfg.to_dict()}
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    tok = getattr(draft, "draft_tokenizer", None)
    if tok is not None:
        tok.save_pretrained(folder)
    (folder / "provenance.json").write_text(json.dumps(provenance(extra_provenance), indent=2) + "\n")
    return folder


def check_header(data: dict[str, Any], where: str) -> None:
    """Refuse a config.json of another format, a newer format version, or an algorithm not registered."""
    if data.get("format") != FORMAT:
        raise DraftFolderError(f"'{where}' holds format {data.get('format')!r}, not a {FORMAT} draft folder.")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DraftFolderError(f"'{where}' is draft format version {version!r}; this specforge_het reads versions up to "
                               f"{FORMAT_VERSION}. Upgrade specforge_het to load it.")
    name = data.get("algorithm")
    if name not in algorithm_names():
        raise DraftFolderError(f"'{where}' is a draft of algorithm {name!r}, which this specforge_het does not have "
                               f"(registered: {algorithm_names()}).")


def read_draft_config(folder: str | Path) -> DraftConfig:
    path = resolve_draft_path(str(folder)) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"'{folder}' is not a draft folder: {path.name} is missing.")
    data = json.loads(path.read_text())
    check_header(data, str(folder))
    return DraftConfig.from_dict(data)


def build_from_config(cfg: DraftConfig, vocab: VocabAdapter | None = None) -> DraftModel:
    """A draft with fresh weights of the class cfg.algorithm names (the registry's)."""
    return get_algorithm(cfg.algorithm).build(cfg, vocab)


def vocab_from_state(cfg: DraftConfig, state: dict[str, Any]) -> VocabAdapter | None:
    if "vocab.d2t" not in state:
        return None
    return VocabAdapter(state["vocab.d2t"], cfg.base["vocab_size"], state.get("vocab.input_map"),
                        state.get("vocab.draft_token_ids"))


def load_draft(folder: str | Path, base) -> DraftModel:
    """Load a draft folder onto `base`; fails naming both shapes when the base does not match."""
    folder = resolve_draft_path(str(folder))
    cfg = read_draft_config(folder)
    check_base_matches(cfg, base.describe())
    state = load_file(str(folder / WEIGHTS))
    draft = build_from_config(cfg, vocab_from_state(cfg, state))
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DraftFolderError(f"'{folder}/{WEIGHTS}' does not match its {CONFIG}: missing {missing}, "
                               f"unexpected {unexpected}.")
    if cfg.embed == "foreign":
        from transformers import AutoTokenizer

        draft.draft_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return draft.attach(base).to(device=base.device, dtype=base.dtype)


def draft_parameter_counts(draft: DraftModel) -> dict[str, int]:
    """Parameters the draft owns, by top-level part."""
    counts: dict[str, int] = {}
    for name, p in draft.named_parameters():
        counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + p.numel()
    return counts
