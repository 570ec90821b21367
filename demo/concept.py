"""A heterogeneous base/draft pair in a few lines, and what differs between them.

    python demo/concept.py                          # tiny random models built in code (seconds)
    python demo/concept.py --@gemma3_smollm2_het    # Gemma-3-270M base, Llama-family SmolLM2-vocabulary draft
"""

from __future__ import annotations

import tempfile

import torch
from rich.console import Console
from rich.table import Table

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import draft_parameter_counts, load_draft, save_draft
from specforge_het.cli import run_cli
from specforge_het.config import Config
from specforge_het.models.base import BaseModel
from specforge_het.testing import CORPUS_A, CORPUS_B, make_tokenizer, save_tiny_base

SAMPLE = "Speculative decoding lets a small draft model propose tokens that the base model verifies at once."


def tiny_pair(cfg: Config, workdir: str) -> None:
    """Fill cfg with a tiny Llama base and a Qwen3 draft of another width and tokenizer."""
    m = cfg.modeling
    m.base_model = save_tiny_base(f"{workdir}/base", "llama", make_tokenizer(CORPUS_A, 300))
    make_tokenizer(CORPUS_B, 260).save_pretrained(f"{workdir}/draft_tok")
    m.algorithm, m.draft_family, m.draft_hidden_size = "eagle_v3", "qwen3", 48
    m.vocab, m.draft_tokenizer = "foreign", f"{workdir}/draft_tok"


def describe(base: BaseModel, draft) -> Table:
    c, bc = draft.cfg, base.config
    table = Table(title="base vs draft: what differs")
    for col in ("axis", "base model", "draft model"):
        table.add_column(col)
    vocab = {"base": "the base's", "reduced": f"{c.draft_vocab_size} base ids (reduced)",
             "foreign": f"own tokenizer ({c.embed_vocab_size} tokens), {c.draft_vocab_size} map onto base ids"}
    rows = [
        ("layer family", bc.model_type, c.family),
        ("width (hidden size)", bc.hidden_size, c.hidden_size),
        ("layers", base.num_layers, c.num_layers),
        ("heads / kv heads / head_dim", f"{bc.num_attention_heads} / {bc.num_key_value_heads} / "
         f"{getattr(bc, 'head_dim', bc.hidden_size // bc.num_attention_heads)}",
         f"{c.num_heads} / {c.num_kv_heads} / {c.head_dim}"),
        ("rotary embedding", "the base's own", f"the draft's own (theta {c.rope_theta:g})"),
        ("vocabulary", f"{base.vocab_size} tokens", vocab[c.vocab]),
        ("features read", "-", f"base layers {c.feature_layers} -> fc -> width {c.hidden_size}"),
        ("algorithm", "-", c.algorithm),
        ("parameters", f"{sum(p.numel() for p in base.parameters()):,}",
         f"{sum(draft_parameter_counts(draft).values()):,} ({', '.join(f'{k} {v:,}' for k, v in draft_parameter_counts(draft).items())})"),
    ]
    for axis, b, d in rows:
        style = "bold" if str(b) != str(d) else ""
        table.add_row(axis, str(b), str(d), style=style)
    return table


@torch.no_grad()
def main(cfg: Config, presets: list[str]) -> None:
    console = Console()
    with tempfile.TemporaryDirectory() as workdir:
        if not cfg.modeling.base_model:
            tiny_pair(cfg, workdir)
        base = BaseModel.load(cfg.modeling.base_model)
        draft = build_draft(cfg.modeling, base)
        console.print(describe(base, draft))
        ids = base.tokenizer(SAMPLE, return_tensors="pt").input_ids
        if draft.vocab is not None:
            console.print(f"vocabulary coverage on a sample sentence: {draft.vocab.coverage(ids):.1%} of base tokens can be proposed")
        feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
        pos = torch.arange(ids.shape[1])[None]
        logits = draft.logits(draft(ids, draft.input_from_base(ids, feats), pos))
        save_draft(draft, f"{workdir}/draft")
        again = load_draft(f"{workdir}/draft", base)
        same = torch.equal(logits, again.logits(again(ids, again.input_from_base(ids, feats), pos)))
        console.print(f"draft logits {tuple(logits.shape)} over the draft vocabulary; identical after save/reload: {same}")


if __name__ == "__main__":
    run_cli(main, "demo/concept.py")
