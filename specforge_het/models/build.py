"""Build a draft for a base from the `modeling` config section: sizes, vocabulary adapter,
optional initialisation from a pretrained small LM (full fine-tuning or LoRA via peft)."""

from __future__ import annotations

import torch
from torch import nn

from specforge_het.algorithms import get_algorithm
from specforge_het.assets import resolve_model_path
from specforge_het.config import ConfigError, ModelingConfig
from specforge_het.models.adapters import VocabAdapter, foreign_vocab_map, reduced_vocab, token_strings
from specforge_het.models.draft import DraftConfig, DraftModel
from specforge_het.models.families import MODEL_TYPE_TO_FAMILY

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


_STRINGS: dict[tuple[str, int], list] = {}


def cached_token_strings(tokenizer) -> list[str | None]:
    """token_strings, memoised per tokenizer folder (a 262k-token vocabulary takes ~10 s)."""
    key = (getattr(tokenizer, "name_or_path", "") or "", len(tokenizer))
    if not key[0]:
        return token_strings(tokenizer)
    if key not in _STRINGS:
        _STRINGS[key] = token_strings(tokenizer)
    return _STRINGS[key]


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def _sizes(m: ModelingConfig, base) -> dict:
    bc = base.config
    hidden = m.draft_hidden_size or base.hidden_size
    same = hidden == base.hidden_size
    heads = m.draft_num_heads or (bc.num_attention_heads if same else max(1, hidden // 64))
    head_dim = m.draft_head_dim or (getattr(bc, "head_dim", None) if same and not m.draft_num_heads else None) or hidden // heads
    kv = m.draft_num_kv_heads or (bc.num_key_value_heads if same and not m.draft_num_heads else heads)
    if heads % kv:
        raise ConfigError(f"modeling.draft_num_heads ({heads}) must be a multiple of draft_num_kv_heads ({kv}).")
    inter = m.draft_intermediate_size or (bc.intermediate_size if same else (8 * hidden // 3 + 63) // 64 * 64)
    return dict(hidden_size=hidden, num_heads=heads, num_kv_heads=kv, head_dim=head_dim, intermediate_size=inter)


def _vocab(m: ModelingConfig, algorithm: str, base, token_counts, draft_tokenizer):
    """Return (VocabAdapter | None, draft_vocab_size, embed kind, embed_vocab_size, input_map_width)."""
    if m.vocab == "foreign":
        if draft_tokenizer is None:
            raise ConfigError("modeling.vocab = foreign needs modeling.draft_tokenizer (a tokenizer folder or embedded name).")
        if base.tokenizer is None:
            raise ConfigError("a foreign vocabulary needs the base tokenizer to map token strings")
        rows, d2t, input_map = foreign_vocab_map(
            cached_token_strings(base.tokenizer), cached_token_strings(draft_tokenizer), draft_tokenizer)
        if rows.numel() == 0:
            raise ConfigError("the draft tokenizer shares no token string with the base tokenizer: nothing could be proposed")
        adapter = VocabAdapter(d2t, base.vocab_size, input_map, draft_token_ids=rows)
        return adapter, rows.numel(), "foreign", len(draft_tokenizer), input_map.shape[1]
    if m.vocab == "base":
        if algorithm == "eagle_v2":
            return None, 0, "base", 0, 0  # EAGLE-1/2: the base LM head reads the predicted feature
        d2t = torch.arange(base.vocab_size)
    else:
        counts = token_counts if token_counts is not None else torch.zeros(base.vocab_size)
        eos = base.tokenizer.eos_token_id if base.tokenizer is not None else None
        d2t = reduced_vocab(counts, m.draft_vocab_size, always=[eos] if eos is not None else [])
    return VocabAdapter(d2t, base.vocab_size), d2t.numel(), "base", 0, 0


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


def draft_rope(m: ModelingConfig, base) -> tuple[float, dict | None]:
    """(theta, scaling) of the draft's rotary embedding: modeling.draft_rope_theta with plain rope, or
    (0 = inherit) the rope the draft's layers were trained with: that of `init_from`, else the base's, its
    scaling included (EAGLE-3 drafts use the base's rope, e.g. Llama-3.1's llama3 scaling)."""
    if m.draft_rope_theta > 0:
        return float(m.draft_rope_theta), None
    if m.draft_rope_theta < 0:
        raise ConfigError(f"modeling.draft_rope_theta must be > 0, or 0 to inherit; got {m.draft_rope_theta}.")
    if m.init_from:
        from transformers import AutoConfig

        source = AutoConfig.from_pretrained(resolve_model_path(m.init_from))
    else:
        source = base.config
    theta = rope_theta_of(source)
    return (theta if theta is not None else 10000.0), rope_scaling_of(source)


def draft_config(m: ModelingConfig, base, token_counts=None, draft_tokenizer=None) -> tuple[DraftConfig, VocabAdapter | None]:
    algo = get_algorithm(m.algorithm)
    features = list(m.feature_layers) or algo.default_feature_layers(base.num_layers)
    bad = [i for i in features if i != -1 and not 0 <= i <= base.num_layers]
    if bad:
        raise ConfigError(f"modeling.feature_layers {bad} out of range for a base with {base.num_layers} layers (0..{base.num_layers}, or -1).")
    sizes = _sizes(m, base)
    vocab, vsize, embed, evsize, mapw = _vocab(m, m.algorithm, base, token_counts, draft_tokenizer)
    if embed == "base" and algo.fused_first_layer and sizes["hidden_size"] != base.hidden_size:
        embed = "base_proj"  # EAGLE-3 layer 0 needs embeddings at draft width
    theta, scaling = draft_rope(m, base)
    context = getattr(base.config, "max_position_embeddings", None)  # the draft runs at the base's positions
    cfg = DraftConfig(
        algorithm=m.algorithm, family=m.draft_family, num_layers=m.draft_num_layers, rope_theta=theta,
        rope_scaling=scaling, max_position_embeddings=int(context) if context else 32768,
        feature_layers=features, base=base.describe(), vocab=m.vocab, draft_vocab_size=vsize, embed=embed,
        embed_vocab_size=evsize, input_map_width=mapw, attn_implementation=m.attn_implementation,
        draft_tokenizer=m.draft_tokenizer if m.vocab == "foreign" else "", init_from=m.init_from,
        first_input_norm=m.draft_first_input_norm,
        rms_norm_eps=getattr(base.config, "rms_norm_eps", 1e-6), **sizes,
    )
    return cfg, vocab


def build_draft(m: ModelingConfig, base, token_counts: torch.Tensor | None = None, seed: int = 0) -> DraftModel:
    """A new (untrained, or initialised from `init_from`) draft attached to `base`."""
    draft_tok = load_tokenizer(m.draft_tokenizer) if m.vocab == "foreign" and m.draft_tokenizer else None
    cfg, vocab = draft_config(m, base, token_counts, draft_tok)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        draft = DraftModel(cfg, vocab)
        _init_weights(draft)
    draft.draft_tokenizer = draft_tok
    if m.init_from:
        init_from_pretrained(draft, m.init_from, m.init_layers)
        if m.lora_rank:
            add_lora(draft, m.lora_rank)
    elif m.lora_rank:
        raise ConfigError("modeling.lora_rank needs modeling.init_from (LoRA adapts pretrained layers).")
    return draft.attach(base).to(device=base.device, dtype=base.dtype)


def warm_start_draft(m: ModelingConfig, base) -> DraftModel:
    """A trained draft folder to train on (more data, more steps): architecture, vocabulary and weights come
    from the folder; the architecture keys of `m` are not used."""
    from specforge_het.models.speculative import load_draft

    try:
        draft = load_draft(m.init_draft, base)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"modeling.init_draft: {exc}") from exc
    if draft.cfg.algorithm != m.algorithm:
        raise ConfigError(f"modeling.init_draft '{m.init_draft}' is a {draft.cfg.algorithm} draft but the run trains "
                          f"{m.algorithm}: use the matching --@{draft.cfg.algorithm} preset.")
    return draft


def _init_weights(draft: DraftModel, std: float = 0.02) -> None:
    for mod in draft.modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=std)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)


@torch.no_grad()
def init_from_pretrained(draft: DraftModel, name: str, layer_ids: list[int]) -> None:
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
        _copy_layer(dst, layers[i])
    draft.norm.load_state_dict(src.get_decoder().norm.state_dict())
    src_head = src.get_output_embeddings().weight
    if draft.embed_tokens is not None and draft.embed_tokens.num_embeddings == src.get_input_embeddings().num_embeddings:
        draft.embed_tokens.weight.copy_(src.get_input_embeddings().weight)
        if draft.lm_head is not None and draft.vocab.draft_token_ids is not None:
            draft.lm_head.weight.copy_(src_head[draft.vocab.draft_token_ids])
    elif draft.lm_head is not None and draft.vocab is not None and src_head.shape[0] == draft.cfg.base["vocab_size"]:
        draft.lm_head.weight.copy_(src_head[draft.vocab.d2t])  # the LM speaks the base's vocabulary: its head rows


def _copy_layer(dst: nn.Module, src: nn.Module) -> None:
    """Load a pretrained layer; EAGLE-3's widened q/k/v get the pretrained weights on the hidden half."""
    sd = dict(src.state_dict())
    own = dst.state_dict()
    for key, value in list(sd.items()):
        if key.startswith("input_layernorm.") and not any(k.startswith("input_layernorm.") for k in own):
            sd.pop(key)  # EAGLE-1/2 layer 0 has no input norm
        elif key.startswith("input_layernorm.") and "input_layernorm.hidden_norm.weight" in own:
            sd.pop(key)
            sd["input_layernorm.hidden_norm.weight"] = value
            sd["input_layernorm.embed_norm.weight"] = value
        elif key in own and own[key].shape != value.shape:  # [out, 2H] <- [out, H]
            widened = torch.zeros_like(own[key])
            widened[:, value.shape[1]:] = value
            sd[key] = widened
    dst.load_state_dict(sd, strict=True)


def add_lora(draft: DraftModel, rank: int) -> None:
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
