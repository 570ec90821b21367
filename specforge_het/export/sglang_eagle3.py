"""SGLang EAGLE-3 (`--speculative-algorithm EAGLE3`, class LlamaForCausalLMEagle3), and the EAGLE-3
tensor layout it shares with the speculators format (which only renames `midlayer.` to `layers.0.`).

What is written (formats.md):
  fc.weight [H, 3·Hb]; midlayer.{input_layernorm (embedding norm), hidden_norm, post_attention_layernorm};
  midlayer.self_attn.{q,k,v}_proj [.., 2H] and o_proj; midlayer.mlp.*; norm; lm_head [Vd, H];
  d2t int64 [Vd] as OFFSETS (base id = i + d2t[i]; our VocabAdapter stores absolute ids);
  t2d bool [Vb]; embed_tokens [Vb, H] when the draft's embedding is not the base's table.
A foreign-vocabulary draft folds into this layout: its head rows are exactly the draft tokens whose
string is a base token (the build keeps no others), d2t holds their base ids, and the draft's
input embedding of every base id (the mean of the draft pieces spelling it) becomes embed_tokens.
"""

from __future__ import annotations

import torch

from specforge_het.algorithms.eagle_v3 import EagleV3
from specforge_het.algorithms.eagle_v3.model import EagleV3Draft
from specforge_het.export.common import (
    ExportOptions,
    apply_key_map,
    build_imported,
    capture_problems,
    check_base_fits,
    draft_state,
    embedding_table,
    family_refusals,
    float_dtype_of,
    llama_layer_config,
    nothing_left,
    raw_base_embedding,
    refuse,
    same_table,
    sizes_from_llama_config,
    warn,
)
from specforge_het.export.contract import ExportError, check_vocab_maps
from specforge_het.models.adapters import VocabAdapter
from specforge_het.models.draft import DraftConfig, DraftModel

FORMAT = "sglang-eagle3"
ARCH = "LlamaForCausalLMEagle3"


def eagle3_key_map(layer_prefix: str) -> dict[str, str]:
    """Engine tensor name -> DraftModel tensor name (EagleV3, one layer). d2t/t2d/embed_tokens are derived."""
    p, ours = layer_prefix, "layers.0."
    key_map = {
        "fc.weight": "fc.weight",
        "fc.bias": "fc.bias",
        f"{p}input_layernorm.weight": f"{ours}input_layernorm.embed_norm.weight",  # normalises the token embedding
        f"{p}hidden_norm.weight": f"{ours}input_layernorm.hidden_norm.weight",
        f"{p}post_attention_layernorm.weight": f"{ours}post_attention_layernorm.weight",
        "norm.weight": "norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        key_map[f"{p}{name}.weight"] = f"{ours}{name}.weight"
    return key_map


SGLANG_EAGLE3_KEY_MAP = eagle3_key_map("midlayer.")
# Draft tensors that become derived engine tensors (d2t, t2d, embed_tokens) instead of being renamed.
DERIVED = ("vocab.d2t", "vocab.input_map", "vocab.draft_token_ids", "embed_tokens.weight", "embed_proj.weight")


def default_aux_layers(num_base_layers: int) -> list[int]:
    """Both engines' default EAGLE-3 feature layers, as HF hidden_states indices (input of layer i)."""
    n = num_base_layers
    return [2, n // 2, n - 3]


def eagle3_refusals(draft: DraftModel, fmt: str) -> list[str]:
    cfg = draft.cfg
    if not isinstance(draft, EagleV3Draft):
        return [f"it is a {cfg.algorithm} draft; '{fmt}' holds EAGLE-3 drafts (export EagleV2 as sglang-eagle or eagle)."]
    out = family_refusals(draft)
    if cfg.num_layers != 1:
        out.append(f"it has {cfg.num_layers} layers; '{fmt}' holds exactly 1 (multi-layer EAGLE-3 drafts load "
                   "differently in SGLang and vLLM). Train with --modeling.draft_num_layers 1.")
    fl = list(cfg.feature_layers)
    if len(fl) != 3 or fl != sorted(set(fl)):
        out.append(f"its feature layers are {fl}; engines feed exactly 3 distinct base layers in ascending order "
                   "(HF hidden_states indices). Train with e.g. --modeling.feature_layers 2,15,27.")
    out += capture_problems(fl, cfg.base["num_layers"])
    hb = cfg.base["hidden_size"]
    if 3 * hb == cfg.hidden_size:
        out.append("its width is 3 x the base width: SGLang skips fc when feature and draft widths agree.")
    return out


def eagle3_state(draft: DraftModel, layer_prefix: str, dtype: torch.dtype | None, fmt: str,
                 need_embed: bool) -> dict[str, torch.Tensor]:
    """Engine tensors of an EagleV3 draft; every draft tensor is either renamed or derived, none dropped."""
    state = draft_state(draft, dtype)
    inverse = {ours: theirs for theirs, ours in eagle3_key_map(layer_prefix).items()}
    out = apply_key_map(state, inverse)
    vocab = draft.vocab
    d2t_abs = vocab.d2t.detach().cpu().long()
    out["d2t"] = d2t_abs - torch.arange(d2t_abs.shape[0])  # offsets: base id = i + d2t[i]
    out["t2d"] = vocab.t2d().detach().cpu()
    for name in DERIVED:
        state.pop(name, None)
    if need_embed:
        table = embedding_table(draft)
        out["embed_tokens.weight"] = table.to(dtype) if dtype is not None else table
    nothing_left(fmt, state)
    problems = check_vocab_maps(out["d2t"], out["t2d"], draft.cfg.base["vocab_size"])
    if problems:
        raise ExportError(f"vocabulary maps of this draft are invalid: {problems}")
    return out


def needs_embed_tokens(draft: DraftModel) -> bool:
    """True when the draft's embedding of base ids is not the base's own (unscaled) table."""
    if draft.cfg.hidden_size != draft.cfg.base["hidden_size"] or draft.cfg.embed != "base":
        return True
    return not same_table(embedding_table(draft), raw_base_embedding(draft.base))


def to_state_dict(draft: DraftModel, dtype: torch.dtype | None = None,
                  options: ExportOptions | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, tensors) of the SGLang EAGLE-3 folder. Refuses what SGLang cannot run exactly.
    (The folder does not name the base: SGLang gets it as --model-path.)"""
    problems = eagle3_refusals(draft, FORMAT)
    embed = not problems and needs_embed_tokens(draft)
    if embed and draft.cfg.hidden_size == draft.cfg.base["hidden_size"]:
        problems.append("its embedding of base ids differs from the base's embedding table (a foreign vocabulary, "
                        "or a base that scales its embedding such as Gemma) while its width equals the base's: "
                        "SGLang then replaces embed_tokens with the base table. Export as 'speculators' for vLLM, "
                        "or train a draft of another width.")
    refuse(FORMAT, problems)
    state = eagle3_state(draft, "midlayer.", dtype, FORMAT, embed)
    cfg = draft.cfg
    config = {
        "architectures": [ARCH], **llama_layer_config(draft),
        "draft_vocab_size": draft.vocab.draft_vocab_size, "target_hidden_size": cfg.base["hidden_size"],
        "bias": draft.fc.bias is not None, "torch_dtype": str(state["fc.weight"].dtype).removeprefix("torch."),
    }
    if cfg.feature_layers != default_aux_layers(cfg.base["num_layers"]):
        # SGLang adds 1 to these ids (it captures the input of layer id+1); the default needs no key.
        config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in cfg.feature_layers],
                                  "use_aux_hidden_state": True}
    return config, state


# ------------------------------------------------------------------ import back

def eagle3_from_state(fmt: str, layer_cfg: dict, feature_layers: list[int], draft_vocab: int, target_hidden: int,
                      state: dict[str, torch.Tensor], base, layer_prefix: str) -> DraftModel:
    """Rebuild an EagleV3 DraftModel from EAGLE-3 engine tensors (exact inverse of eagle3_state)."""
    check_base_fits(fmt, base, layer_cfg["vocab_size"], target_hidden)
    state = dict(state)
    d2t_abs = state.pop("d2t").long() + torch.arange(draft_vocab)
    state.pop("t2d", None)
    table = state.pop("embed_tokens.weight", None)
    ours = apply_key_map(state, eagle3_key_map(layer_prefix))
    nothing_left(fmt, state)
    vb = layer_cfg["vocab_size"]
    input_map = draft_ids = None
    embed, kind = "base", "base" if torch.equal(d2t_abs, torch.arange(vb)) else "reduced"
    if table is not None:  # the draft's own table over base ids: a 'foreign' embedding whose tokenizer is the base's
        embed, kind = "foreign", "foreign"
        input_map, draft_ids = torch.arange(vb, dtype=torch.int32)[:, None], d2t_abs
        ours["embed_tokens.weight"] = table
    vocab = VocabAdapter(d2t_abs, vb, input_map, draft_token_ids=draft_ids)
    ours.update({f"vocab.{k}": v for k, v in vocab.state_dict().items()})
    cfg = DraftConfig(algorithm=EagleV3.name, family="llama", feature_layers=list(feature_layers), base=base.describe(),
                      vocab=kind, draft_vocab_size=draft_vocab, embed=embed, embed_vocab_size=vb if table is not None else 0,
                      input_map_width=1 if table is not None else 0, draft_tokenizer=base.name if table is not None else "",
                      **sizes_from_llama_config(layer_cfg))
    draft = build_imported(cfg, vocab, ours, base)  # an fc.bias here is 'unexpected': EagleV3 has none
    if table is not None:
        draft.draft_tokenizer = base.tokenizer
    return draft


def normalise_config(config: dict, state: dict[str, torch.Tensor], base=None) -> dict:
    """Fill what SGLang defaults: `bias` false, and `target_hidden_size`, which SGLang takes as the draft's
    width when absent (SpecForge and EAGLE write none for same-width drafts). On import it comes from the base."""
    c = dict(config)
    c.setdefault("bias", False)
    c.setdefault("torch_dtype", float_dtype_of(state))
    if c.get("target_hidden_size") is None:
        c["target_hidden_size"] = base.hidden_size if base is not None else c.get("hidden_size")
        if base is not None and c["target_hidden_size"] != c.get("hidden_size"):
            warn(f"this folder has no target_hidden_size, so SGLang builds fc for the draft width {c.get('hidden_size')}, "
                 f"but the base '{base.name}' is {base.hidden_size} wide: SGLang cannot load it as it is. Imported with "
                 "the base's width; export it again to write target_hidden_size.")
    return c


def from_state_dict(config: dict, state: dict[str, torch.Tensor], base) -> DraftModel:
    config = normalise_config(config, state, base)
    ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    features = [i + 1 for i in ids] if ids else default_aux_layers(base.num_layers)
    if config.get("bias"):
        raise ExportError("this SGLang EAGLE-3 folder has an fc bias; our EagleV3 drafts have none (not importable)")
    return eagle3_from_state(FORMAT, config, features, config["draft_vocab_size"], config["target_hidden_size"],
                             state, base, "midlayer.")
