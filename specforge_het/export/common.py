"""Helpers every export format shares: refusals, the Llama config of the draft layers, the
draft's embedding table over base ids, key maps applied with nothing left over, folder I/O,
and rebuilding a DraftModel from an engine's tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from specforge_het.export.contract import ExportError, check_contract, describe_tensors, dtype_name
from specforge_het.models.adapters import VocabAdapter
from specforge_het.models.draft import DraftConfig, DraftModel

WEIGHTS = "model.safetensors"
BIN_WEIGHTS = "pytorch_model.bin"


def refuse(fmt: str, problems: list[str]) -> None:
    """Raise one ExportError listing every reason the draft cannot be written as `fmt`."""
    if problems:
        lines = "\n  - ".join(problems)
        raise ExportError(f"this draft cannot be exported as '{fmt}':\n  - {lines}")


def family_refusals(draft: DraftModel) -> list[str]:
    cfg = draft.cfg
    out = []
    if cfg.family != "llama":
        out.append(f"its layers are '{cfg.family}' (e.g. Qwen3's q/k norms, Gemma3's extra norms); engine draft "
                   "layers are Llama. Train a draft with --modeling.draft_family llama.")
    return out


def llama_layer_config(draft: DraftModel) -> dict[str, Any]:
    """HF Llama config of the draft layers; vocab_size is the base's (engines index base ids)."""
    c = draft.cfg
    return {
        "model_type": "llama", "hidden_size": c.hidden_size, "vocab_size": c.base["vocab_size"],
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "intermediate_size": c.intermediate_size,
        "rms_norm_eps": c.rms_norm_eps, "hidden_act": "silu", "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_theta, "rope_scaling": None, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False,
    }


def draft_state(draft: DraftModel, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Everything the draft owns (LoRA merged), float tensors cast to `dtype`, on CPU."""
    out = {}
    for k, v in draft.trainable_state_dict().items():
        v = v.detach().cpu()
        out[k] = v.to(dtype) if (dtype is not None and v.is_floating_point()) else v
    return out


@torch.no_grad()
def embedding_table(draft: DraftModel) -> torch.Tensor:
    """[Vb, width] the embedding the draft gives each base id (foreign pieces averaged, projections applied)."""
    ids = torch.arange(draft.cfg.base["vocab_size"], device=draft.base.device)
    return draft.embed(ids[None])[0].detach().cpu()


def raw_base_embedding(base) -> torch.Tensor:
    """The base's embedding weight as engines share it (no Gemma-style scaling)."""
    return base.model.get_input_embeddings().weight.detach().cpu()


def same_table(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of the less precise of the two dtypes (a bfloat16 copy equals its float32 source)."""
    if a.shape != b.shape:
        return False
    low = a.dtype if a.element_size() <= b.element_size() else b.dtype
    return torch.allclose(a.to(low).float(), b.to(low).float(), rtol=1e-3, atol=1e-5)


def apply_key_map(state: dict[str, torch.Tensor], key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename `state` by key_map (source name -> target name), *taking* the keys out of `state`."""
    return {dst: state.pop(src) for src, dst in key_map.items() if src in state}


def nothing_left(fmt: str, state: dict[str, torch.Tensor]) -> None:
    if state:
        raise ExportError(f"draft tensors {sorted(state)} have no place in format '{fmt}' (refusing to drop them silently)")


# ------------------------------------------------------------------ folders

def write_folder(out_dir: str | Path, fmt: str, config: dict, state: dict[str, torch.Tensor],
                 extra_files: dict[str, str] | None = None) -> Path:
    """Check the contract, write config.json + model.safetensors, read them back and check again."""
    problems = check_contract(fmt, config, describe_tensors(state))
    refuse(fmt, problems)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text)
    again_cfg, again = read_folder(out)
    refuse(fmt, check_contract(fmt, again_cfg, describe_tensors(again)))
    return out


def read_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json + model.safetensors (or pytorch_model.bin, read with weights_only=True)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ExportError(f"'{folder}' has no config.json: not an exported draft folder")
    config = json.loads((folder / "config.json").read_text())
    if (folder / WEIGHTS).is_file():
        return config, load_file(str(folder / WEIGHTS))
    if (folder / BIN_WEIGHTS).is_file():
        state = torch.load(folder / BIN_WEIGHTS, map_location="cpu", weights_only=True)  # never unpickle code
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ExportError(f"'{folder / BIN_WEIGHTS}' is not a plain name -> tensor state dict")
        return config, state
    raise ExportError(f"'{folder}' holds neither {WEIGHTS} nor {BIN_WEIGHTS}")


def float_dtype_of(state: dict[str, torch.Tensor]) -> str:
    floats = {dtype_name(v.dtype) for v in state.values() if v.is_floating_point()}
    return sorted(floats)[0] if len(floats) == 1 else "float32"


# ------------------------------------------------------------------ import back into a DraftModel

def sizes_from_llama_config(cfg: dict) -> dict[str, Any]:
    heads = cfg["num_attention_heads"]
    return dict(hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
                num_kv_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                intermediate_size=cfg["intermediate_size"], rope_theta=float(cfg.get("rope_theta", 10000.0)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=cfg.get("max_position_embeddings", 32768))


def check_base_fits(fmt: str, base, vocab_size: int, target_hidden: int) -> None:
    got = (base.vocab_size, base.hidden_size)
    if got != (vocab_size, target_hidden):
        raise ExportError(f"the '{fmt}' folder was made for a base with vocabulary {vocab_size} and width "
                          f"{target_hidden}, but the base given ('{base.name}') has {got[0]} and {got[1]}. "
                          "Pass the base it was trained for (--modeling.base_model).")


def build_imported(cfg: DraftConfig, vocab: VocabAdapter | None, state: dict[str, torch.Tensor], base,
                   may_miss: tuple[str, ...] = ()) -> DraftModel:
    """A DraftModel with exactly `state` loaded (names listed in may_miss keep their fresh values)."""
    draft = DraftModel(cfg, vocab)
    own = draft.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = draft.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in may_miss]
    if missing or unexpected:
        raise ExportError(f"imported tensors do not fit the draft: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return draft.attach(base).to(device=base.device, dtype=base.dtype).train(False)
