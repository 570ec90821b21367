"""New drafts from the `modeling` config section: the DraftConfig of a base (sizes, vocabulary adapter,
feature layers, rope), the algorithm's draft class with fresh weights, and optional initialisation
from a pretrained small LM (full fine-tuning or LoRA via peft). The algorithm decides its defaults
and layout through the registry; the layer-level parts are models/build.py's."""

from __future__ import annotations

import dataclasses

import torch

from specforge_het.algorithms.io import build_from_config
from specforge_het.algorithms.registry import get_algorithm
from specforge_het.assets import resolve_model_path
from specforge_het.config import ConfigError, ModelingConfig
from specforge_het.models.adapters import VocabAdapter, foreign_vocab_map, frequent_rows, reduced_vocab, token_strings
from specforge_het.models.build import (
    add_lora,
    copy_layer,
    init_from_pretrained,
    init_weights,
    rope_scaling_of,
    rope_theta_of,
)
from specforge_het.models.draft import DraftConfig, DraftModel

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


def _foreign_vocab(base, draft_tokenizer, token_counts=None, size: int = 0):
    """The foreign vocabulary: every draft-tokenizer token whose text is one base token; with token counts
    of the training data, only the `size` rows whose base ids are most frequent there (EAGLE-3 picks its
    draft vocabulary by frequency too)."""
    if draft_tokenizer is None:
        raise ConfigError("modeling.vocab = foreign needs modeling.draft_tokenizer (a tokenizer folder or embedded name).")
    if base.tokenizer is None:
        raise ConfigError("a foreign vocabulary needs the base tokenizer to map token strings")
    rows, d2t, input_map = foreign_vocab_map(
        cached_token_strings(base.tokenizer), cached_token_strings(draft_tokenizer), draft_tokenizer)
    if rows.numel() == 0:
        raise ConfigError("the draft tokenizer shares no token string with the base tokenizer: nothing could be proposed")
    if token_counts is not None and 0 < size < rows.numel():
        keep = frequent_rows(d2t, token_counts, size)
        rows, d2t = rows[keep], d2t[keep]
    adapter = VocabAdapter(d2t, base.vocab_size, input_map, draft_token_ids=rows)
    return adapter, rows.numel(), "foreign", len(draft_tokenizer), input_map.shape[1]


def _vocab(m: ModelingConfig, algo, base, token_counts, draft_tokenizer):
    """Return (VocabAdapter | None, draft_vocab_size, embed kind, embed_vocab_size, input_map_width)."""
    if m.vocab == "foreign":
        return _foreign_vocab(base, draft_tokenizer, token_counts, m.draft_vocab_size)
    if m.vocab == "base":
        if not algo.own_head_for_base_vocab:
            return None, 0, "base", 0, 0  # the base LM head reads the draft's output
        d2t = torch.arange(base.vocab_size)
    else:
        counts = token_counts if token_counts is not None else torch.zeros(base.vocab_size)
        eos = base.tokenizer.eos_token_id if base.tokenizer is not None else None
        d2t = reduced_vocab(counts, m.draft_vocab_size, always=[eos] if eos is not None else [])
    return VocabAdapter(d2t, base.vocab_size), d2t.numel(), "base", 0, 0


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
    vocab, vsize, embed, evsize, mapw = _vocab(m, algo, base, token_counts, draft_tokenizer)
    if embed == "base" and algo.embeds_at_draft_width and sizes["hidden_size"] != base.hidden_size:
        embed = "base_proj"  # the draft reads token embeddings at its own width
    theta, scaling = draft_rope(m, base)
    context = getattr(base.config, "max_position_embeddings", None)  # the draft runs at the base's positions
    cfg = DraftConfig(
        algorithm=algo.name, family=m.draft_family, num_layers=m.draft_num_layers, rope_theta=theta,
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
        draft = build_from_config(cfg, vocab)
        init_weights(draft)
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
    from specforge_het.algorithms.io import load_draft

    try:
        draft = load_draft(m.init_draft, base)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"modeling.init_draft: {exc}") from exc
    if draft.cfg.algorithm != get_algorithm(m.algorithm).name:
        raise ConfigError(f"modeling.init_draft '{m.init_draft}' is a {draft.cfg.algorithm} draft but the run trains "
                          f"{m.algorithm}: use the matching --@{draft.cfg.algorithm} preset.")
    return draft


@torch.no_grad()
def widen_vocab(draft: DraftModel, base, token_counts: torch.Tensor, rows: int, init: str = "map") -> DraftModel:
    """A trained reduced-vocabulary draft with `rows` head rows: the base ids it already proposes keep their
    trained rows, and the most frequent ids of `token_counts` [Vb] it cannot propose are added (only ids the
    data uses), each new row starting from the base's LM-head row of that id (`init`: see `new_head_rows`).
    Everything else is unchanged, so the old rows' logits are the same as before. d2t stays sorted by base id."""
    cfg = draft.cfg
    if cfg.vocab != "reduced" or draft.lm_head is None or draft.vocab is None:
        raise ConfigError(f"modeling.widen_vocab widens a reduced vocabulary (a subset of base ids); this draft's "
                          f"vocabulary is '{cfg.vocab}'. Drop --modeling.widen_vocab.")
    old = draft.vocab.d2t.cpu()
    if rows <= old.numel():
        raise ConfigError(f"modeling.widen_vocab {rows} must exceed the draft's {old.numel()} rows (0 keeps them).")
    free = token_counts.double().clone()
    free[old] = -1.0
    extra = torch.argsort(-free, stable=True)[: rows - old.numel()]
    extra = extra[free[extra] > 0]  # ids the training data uses
    if extra.numel() == 0:
        raise ConfigError(f"modeling.widen_vocab: the draft's {old.numel()} rows already hold every answer token of the "
                          "training data; nothing to add. Drop --modeling.widen_vocab.")
    d2t = torch.sort(torch.cat([old, extra])).values
    new = build_from_config(dataclasses.replace(cfg, draft_vocab_size=int(d2t.numel())),
                            VocabAdapter(d2t, cfg.base["vocab_size"]))
    keep = {k: v for k, v in draft.state_dict().items() if not k.startswith("vocab.") and k != "lm_head.weight"}
    missing, unexpected = new.load_state_dict(keep, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight", "vocab.d2t"}, (missing, unexpected)
    assert new.lm_head is not None  # a reduced vocabulary has its own head
    head = new_head_rows(base.lm_head.weight.detach().float().cpu(), old, draft.lm_head.weight.detach().float().cpu(),
                         d2t, init)
    new.lm_head.weight.copy_(head)
    return new.attach(base).to(device=base.device, dtype=draft.lm_head.weight.dtype)


@torch.no_grad()
def grow_layers(draft: DraftModel, base, n: int, seed: int = 0) -> DraftModel:
    """A trained draft with `n` more decoder layers after its own. Each new layer starts from the base's last layer
    where family and sizes match (else random weights), with its output projections (attention o_proj, MLP
    down_proj) at zero: it adds nothing to the residual stream yet, so the grown draft starts out computing exactly
    what the trained one did, and training moves on from there. `new.grown_from` says which start was taken."""
    cfg = draft.cfg
    if n < 1:
        raise ConfigError(f"modeling.grow_layers is the number of layers to add: >= 1, or 0 to keep the draft's; got {n}.")
    new = build_from_config(dataclasses.replace(cfg, num_layers=cfg.num_layers + n), draft.vocab)
    added = list(new.layers)[cfg.num_layers:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for layer in added:
            init_weights(layer)
    missing, unexpected = new.load_state_dict(draft.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(tuple(f"layers.{i}." for i in range(cfg.num_layers, len(new.layers))))
                                  for k in missing), (missing, unexpected)
    src = base.layers[-1]
    same = type(src) is type(added[0]) and {k: v.shape for k, v in src.state_dict().items()} == \
        {k: v.shape for k, v in added[0].state_dict().items()}
    for layer in added:
        if same:
            copy_layer(layer, src)
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            out = layer.get_submodule(name)
            out.weight.zero_()
            if out.bias is not None:
                out.bias.zero_()
    new.draft_tokenizer = getattr(draft, "draft_tokenizer", None)
    new.grown_from = "the base's last layer" if same else "random weights (the base's layers differ in family or size)"
    return new.attach(base).to(device=base.device, dtype=next(draft.parameters()).dtype)


def new_head_rows(base_head: torch.Tensor, old: torch.Tensor, trained: torch.Tensor, d2t: torch.Tensor,
                  init: str) -> torch.Tensor:
    """Head rows for the ids `d2t` [N]: the `trained` rows [len(old), Hd] where `old` (sorted base ids) has them,
    new ids from `base_head` [Vb, Hb]. init "base": the base's row as it is (needs Hb == Hd). init "map": the
    base's row times the ridge-regularised least-squares map A [Hb, Hd] with base_head[old] @ A ~ trained, so a
    new row lands where the draft's own trained rows sit (their scale and rotation) and any width works."""
    if init == "base":
        if base_head.shape[1] != trained.shape[1]:
            raise ConfigError(f"modeling.widen_init base copies the base's head rows (width {base_head.shape[1]}) into "
                              f"a draft head of width {trained.shape[1]}: use --modeling.widen_init map.")
        head = base_head[d2t].clone()
    elif init == "map":
        x = base_head[old].double()
        gram = x.T @ x
        ridge = 1e-4 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        a = torch.linalg.solve(gram + ridge, x.T @ trained.double())
        head = (base_head[d2t].double() @ a).float()
    else:
        raise ConfigError(f"modeling.widen_init '{init}': choose map or base.")
    head[torch.searchsorted(d2t, old)] = trained
    return head
