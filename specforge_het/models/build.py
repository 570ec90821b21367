"""Layer-level parts of building a draft: the rope of an HF config, weight initialisation, copying
pretrained layers into a draft (`init_from`), LoRA, and LoRA-merged state dicts. Nothing here reads
the config schema or knows an algorithm; algorithms/build.py turns the `modeling` section into a draft.
"""

from __future__ import annotations

import torch
from torch import nn

from specforge_het.assets import resolve_model_path
from specforge_het.errors import ConfigError
from specforge_het.models.families import MODEL_TYPE_TO_FAMILY

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _full_attention_rope(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "full_attention" in rope:  # Gemma3: one entry per layer type
        rope = rope["full_attention"] or {}
    return rope if isinstance(rope, dict) else {}


def rope_theta_of(config) -> float | None:
    """The rotary base of an HF config's full-attention layers (rope_theta or rope_parameters)."""
    theta = _full_attention_rope(config).get("rope_theta")
    theta = theta if theta is not None else getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


def rope_scaling_of(config) -> dict | None:
    """The rope type and parameters besides theta of an HF config's full-attention layers (e.g. llama3's
    factor and frequency bands), or None for plain rope."""
    return rope_scaling(_full_attention_rope(config))


def rope_scaling(rope: dict | None) -> dict | None:
    """A rope_parameters / rope_scaling dict without theta, its type under 'rope_type'; None for plain rope."""
    rope = dict(rope or {})
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "default":
        return None
    rope.pop("rope_theta", None)
    rope.pop("type", None)
    return {**rope, "rope_type": kind}


def init_weights(draft: nn.Module, std: float = 0.02) -> None:
    for mod in draft.modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=std)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)


@torch.no_grad()
def init_from_pretrained(draft, name: str, layer_ids: list[int]) -> None:
    """Copy layers (and, for a foreign vocabulary from the same tokenizer, embeddings and head rows)."""
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=torch.float32)
    fam = MODEL_TYPE_TO_FAMILY.get(src.config.model_type)
    if fam != draft.cfg.family or src.config.hidden_size != draft.cfg.hidden_size:
        raise ConfigError(
            f"modeling.init_from '{name}' is {src.config.model_type} width {src.config.hidden_size}; the draft is "
            f"{draft.cfg.family} width {draft.cfg.hidden_size}. Initialisation needs the same family and width."
        )
    layers = src.get_decoder().layers
    ids = layer_ids or list(range(draft.cfg.num_layers))
    if len(ids) != draft.cfg.num_layers or max(ids) >= len(layers):
        raise ConfigError(f"modeling.init_layers {ids} must name {draft.cfg.num_layers} of the {len(layers)} source layers.")
    for dst, i in zip(draft.layers, ids):
        copy_layer(dst, layers[i])
    draft.norm.load_state_dict(src.get_decoder().norm.state_dict())
    src_head = src.get_output_embeddings().weight
    if draft.embed_tokens is not None and draft.embed_tokens.num_embeddings == src.get_input_embeddings().num_embeddings:
        draft.embed_tokens.weight.copy_(src.get_input_embeddings().weight)
        if draft.lm_head is not None and draft.vocab.draft_token_ids is not None:
            draft.lm_head.weight.copy_(src_head[draft.vocab.draft_token_ids])
    elif draft.lm_head is not None and draft.vocab is not None and src_head.shape[0] == draft.cfg.base["vocab_size"]:
        draft.lm_head.weight.copy_(src_head[draft.vocab.d2t])  # the LM speaks the base's vocabulary: its head rows


def copy_layer(dst: nn.Module, src: nn.Module) -> None:
    """Load a pretrained layer; a fused first layer's widened q/k/v get the pretrained weights on the hidden half
    and both its input norms the pretrained input norm."""
    sd = dict(src.state_dict())
    own = dst.state_dict()
    for key, value in list(sd.items()):
        if key.startswith("input_layernorm.") and not any(k.startswith("input_layernorm.") for k in own):
            sd.pop(key)  # a first layer without input norm (nn.Identity)
        elif key.startswith("input_layernorm.") and "input_layernorm.hidden_norm.weight" in own:
            sd.pop(key)
            sd["input_layernorm.hidden_norm.weight"] = value
            sd["input_layernorm.embed_norm.weight"] = value
        elif key in own and own[key].shape != value.shape:  # [out, 2H] <- [out, H]
            widened = torch.zeros_like(own[key])
            widened[:, value.shape[1]:] = value
            sd[key] = widened
    dst.load_state_dict(sd, strict=True)


def add_lora(draft, rank: int) -> None:
    """LoRA (peft) on the copied layers; their original weights are frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    draft.layers.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS), draft.layers)
    for name, p in draft.layers.named_parameters():
        if "lora_" in name or "norm" in name:
            p.requires_grad_(True)


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """state_dict with LoRA deltas folded into the plain weight names (a LoRA-free draft folder).

    `state`: a full state dict of `model` to merge instead of its own (FSDP / DeepSpeed hand over the
    gathered one while the module holds shards); its LoRA delta is B @ A * scaling, as peft computes it."""
    from peft.tuners.lora import LoraLayer

    lora = {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}
    out: dict[str, torch.Tensor] = {}
    for name, t in (model.state_dict() if state is None else state).items():
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            owner = name.split(".base_layer.")[0]
            clean = name.replace(".base_layer.", ".")
            if clean.endswith("weight") and state is None:
                t = t + lora[owner].get_delta_weight("default").to(t.dtype)
            elif clean.endswith("weight"):
                a, b = state[f"{owner}.lora_A.default.weight"], state[f"{owner}.lora_B.default.weight"]
                t = t + ((b.float() @ a.float()) * lora[owner].scaling["default"]).to(t.dtype)
            out[clean] = t.detach().clone()
        else:
            out[name] = t.detach().clone()
    return out

