"""Helpers every export format shares: refusals, the Llama config of the draft layers, the
draft's embedding table over base ids, key maps applied with nothing left over, folder I/O,
and rebuilding a DraftModel from an engine's tensors."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from specforge_het.algorithms.io import build_from_config
from specforge_het.export.contract import ExportError, ExportWarning, check_contract, describe_tensors, dtype_name
from specforge_het.models.adapters import VocabAdapter
from specforge_het.models.build import rope_scaling, rope_scaling_of
from specforge_het.models.draft import DraftConfig, DraftModel

WEIGHTS = "model.safetensors"
BIN_WEIGHTS = "pytorch_model.bin"


@dataclass(frozen=True)
class ExportOptions:
    """What only the user knows about the serving side (CLI `--verifier`, `--force`)."""

    verifier: str = ""  # the base as the engine loads it (a Hub id or a folder); "" = derived from the draft's base
    force: bool = False  # write folders only some engine versions accept (vLLM's EAGLE-3 target list, eagle-llm's rope)


def warn(message: str) -> None:
    warnings.warn(message, ExportWarning, stacklevel=3)


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


def text_config(config):
    """The language model's config of a (possibly multimodal) HF config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def context_and_rope(draft: DraftModel) -> dict[str, Any]:
    """The base's context length (engines refuse a draft whose max_position_embeddings is below the
    target's) and the rope the draft computes with: its theta, and its scaling (None = plain rope).
    New drafts inherit the base's rope scaling (models/build.py); one built with plain rope is written
    as plain rope, which is what it computes."""
    c, base_cfg = draft.cfg, text_config(draft.base.config)
    context = getattr(base_cfg, "max_position_embeddings", None) or c.max_position_embeddings
    base_scaling = rope_scaling_of(base_cfg)
    if base_scaling and base_scaling != c.rope_scaling:
        warn(f"the base uses '{base_scaling['rope_type']}' rope scaling but this draft was built with "
             f"{'plain rope' if not c.rope_scaling else repr(c.rope_scaling)} (theta {c.rope_theta}); the folder "
             "describes the draft's own rope, so engines run it as it was trained. Drafts built now inherit the "
             "base's rope (--modeling.draft_rope_theta 0).")
    return {"max_position_embeddings": int(context), "rope_theta": c.rope_theta,
            "rope_scaling": dict(c.rope_scaling) if c.rope_scaling else None}


def llama_layer_config(draft: DraftModel) -> dict[str, Any]:
    """HF Llama config of the draft layers; vocab_size is the base's (engines index base ids), context
    length from the base, rope as the draft computes it."""
    c = draft.cfg
    return {
        "model_type": "llama", "hidden_size": c.hidden_size, "vocab_size": c.base["vocab_size"],
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "intermediate_size": c.intermediate_size,
        "rms_norm_eps": c.rms_norm_eps, "hidden_act": "silu", **context_and_rope(draft),
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    }


def verifier_name(draft: DraftModel, options: ExportOptions) -> str | None:
    """The base as an engine must load it: `--verifier`, else the base's name. An embedded alias (a Q4
    GGUF dequantised to float32) is no engine-loadable name: its original Hub id is used where
    specforge_het/assets.py knows it, with a warning; None where it does not."""
    from specforge_het.assets import EMBEDDED, cache_dir, is_embedded, original_hub_id

    if options.verifier:
        if is_embedded(options.verifier):
            raise ExportError(f"--verifier {options.verifier!r} is an embedded alias, which no engine can load: give "
                              f"a Hub id or a folder (e.g. {original_hub_id(options.verifier) or 'the original model'}).")
        return options.verifier
    name = draft.base.name
    if not is_embedded(name):
        return name
    hub = original_hub_id(name)
    msg = (f"the base '{name}' is an embedded alias: the {EMBEDDED[name].gguf} GGUF dequantised to float32. "
           "The draft was trained on its features, which differ from those of the original weights an engine "
           "loads (acceptance can be lower). ")
    folder = cache_dir() / name
    if hub:
        warn(msg + f"Writing its original Hub id '{hub}' (known to specforge_het/assets.py) as the verifier; pass "
             f"--verifier NAME for another, e.g. the dequantised folder {folder} (the features it was trained on).")
        return hub
    warn(msg + f"Its original Hub id is unknown: pass --verifier NAME (a Hub id, or the dequantised folder {folder}).")
    return None


def capture_problems(feature_layers: list[int], num_base_layers: int) -> list[str]:
    """Feature layers the engines cannot capture. Both capture the input of base layer i (HF hidden_states[i])
    for i in 1 .. L-1: 0 is the embedding output and L the final output, which neither hands to a draft."""
    bad = [i for i in feature_layers if not 1 <= i <= num_base_layers - 1]
    if not bad:
        return []
    return [f"its feature layers {list(feature_layers)} include {bad}: engines capture only the inputs of base layers "
            f"1 .. {num_base_layers - 1} (HF hidden_states indices) of this {num_base_layers}-layer base. Train with "
            "feature layers in that range (--modeling.feature_layers, e.g. the engines' default 2, L/2, L-3)."]


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
                max_position_embeddings=cfg.get("max_position_embeddings", 32768),
                rope_scaling=rope_scaling(cfg.get("rope_scaling")))


def check_base_fits(fmt: str, base, vocab_size: int, target_hidden: int) -> None:
    got = (base.vocab_size, base.hidden_size)
    if got != (vocab_size, target_hidden):
        raise ExportError(f"the '{fmt}' folder was made for a base with vocabulary {vocab_size} and width "
                          f"{target_hidden}, but the base given ('{base.name}') has {got[0]} and {got[1]}. "
                          "Pass the base it was trained for (--modeling.base_model).")


def build_imported(cfg: DraftConfig, vocab: VocabAdapter | None, state: dict[str, torch.Tensor], base,
                   may_miss: tuple[str, ...] = ()) -> DraftModel:
    """A DraftModel with exactly `state` loaded (names listed in may_miss keep their fresh values)."""
    draft = build_from_config(cfg, vocab)
    own = draft.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = draft.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in may_miss]
    if missing or unexpected:
        raise ExportError(f"imported tensors do not fit the draft: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return draft.attach(base).to(device=base.device, dtype=base.dtype).train(False)
