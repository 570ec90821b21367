"""`python -m specforge_het.drafts ship --vocab_rows N`: a foreign-vocabulary draft shrunk to the rows
its training data uses keeps the kept rows' logits exactly and still decodes losslessly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import draft_modeling

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import load_draft, save_draft
from specforge_het.drafts import __main__ as drafts_cli
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.adapters import compact_foreign_vocab
from specforge_het.testing import CORPUS_A


def test_compact_foreign_vocab_keeps_frequent_rows_and_needed_pieces():
    d2t = torch.tensor([5, 1, 7, 3])  # head rows -> base ids
    input_map = torch.tensor([[-1, -1], [0, -1], [-1, -1], [2, 3], [-1, -1], [1, 4], [-1, -1], [5, -1]], dtype=torch.int32)
    counts = torch.tensor([0, 9, 0, 4, 0, 0, 0, 2])  # base ids 1, 3, 7 seen; 5 never
    rows, embed, new_map = compact_foreign_vocab(d2t, input_map, counts, rows=2, embed_rows=6)
    assert rows.tolist() == [1, 3]  # base ids 1 (9) and 3 (4); 7 (2) and 5 (0) dropped
    assert embed.tolist() == [0, 2, 3, 5]  # pieces of base ids 1, 3, 7; base id 5's pieces 1, 4 not needed
    for b in range(8):  # every kept piece still points at the same embedding row
        old = [p for p in input_map[b].tolist() if p >= 0 and p in embed.tolist()]
        assert [int(embed[p]) for p in new_map[b].tolist() if p >= 0] == old
    assert new_map.tolist() == [[-1, -1], [0, -1], [-1, -1], [1, 2], [-1, -1], [-1, -1], [-1, -1], [3, -1]]
    assert new_map.dtype == input_map.dtype
    _, _, narrow = compact_foreign_vocab(d2t, input_map, torch.tensor([0, 9, 0, 0, 0, 0, 0, 2]), 2, 6)
    assert narrow.tolist() == [[-1], [0], [-1], [-1], [-1], [-1], [-1], [1]]  # no row keeps 2 pieces: 1 column


@pytest.fixture
def foreign_folder(llama_base, tok_b_dir, tmp_path):
    draft = build_draft(draft_modeling(vocab="foreign", tok_dir=tok_b_dir), llama_base, seed=3).eval()
    folder = save_draft(draft, tmp_path / "trained")
    data = tmp_path / "conversations.jsonl"
    rows = [{"id": str(i), "conversations": [{"role": "user", "content": "Say something."},
                                             {"role": "assistant", "content": text}]} for i, text in enumerate(CORPUS_A)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return draft, folder, data


def test_ship_vocab_rows_keeps_logits_and_decodes_losslessly(llama_base, foreign_folder, tmp_path, monkeypatch):
    draft, folder, data = foreign_folder
    monkeypatch.setattr(drafts_cli, "SHIPPED_DRAFTS", tmp_path / "shipped")
    n_rows = draft.vocab.draft_vocab_size // 2
    drafts_cli.ship(str(folder), "small", dtype="float32", vocab_rows=n_rows, data=str(data))
    small = load_draft(tmp_path / "shipped" / "small", llama_base).eval()
    assert small.vocab.draft_vocab_size == n_rows
    assert small.embed_tokens.num_embeddings < draft.embed_tokens.num_embeddings
    prov = json.loads((tmp_path / "shipped" / "small" / "provenance.json").read_text())["compacted_vocabulary"]
    assert prov["head_rows"] == [draft.vocab.draft_vocab_size, n_rows] and 0 < prov["answer_token_coverage"] <= 1

    ids = llama_base.tokenizer(CORPUS_A[1], return_tensors="pt").input_ids  # tokens the data has: embeddings kept
    feats = llama_base.features(ids, tuple(draft.cfg.feature_layers)).features
    pos = torch.arange(ids.shape[1])[None]
    full = draft.logits(draft(ids, draft.input_from_base(ids, feats), pos))
    kept = small.logits(small(ids, small.input_from_base(ids, feats), pos))
    rows = torch.searchsorted(draft.vocab.draft_token_ids, small.vocab.draft_token_ids)
    assert torch.equal(draft.vocab.draft_token_ids[rows], small.vocab.draft_token_ids)
    torch.testing.assert_close(kept, full[..., rows])

    prompt = llama_base.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    ref = Decoder(llama_base).generate(prompt, 24).tokens
    assert Decoder(llama_base, DraftProposer(small, TreeSpec("dynamic", 3, 3, 8))).generate(prompt, 24).tokens == ref


def test_ship_vocab_rows_refuses_a_draft_without_foreign_vocabulary(llama_base, tmp_path, monkeypatch):
    folder = save_draft(build_draft(draft_modeling(), llama_base), tmp_path / "reduced")
    monkeypatch.setattr(drafts_cli, "SHIPPED_DRAFTS", tmp_path / "shipped")
    with pytest.raises(SystemExit, match="foreign"):
        drafts_cli.ship(str(folder), "x", vocab_rows=10)
    assert not (tmp_path / "shipped" / "x").exists()  # a refusal leaves nothing behind


def test_ship_over_a_shipped_draft_leaves_none_of_its_files(llama_base, tmp_path, monkeypatch):
    """A draft shipped under a name that was shipped before keeps nothing of the old one's records."""
    monkeypatch.setattr(drafts_cli, "SHIPPED_DRAFTS", tmp_path / "shipped")
    old = save_draft(build_draft(draft_modeling(), llama_base), tmp_path / "old")
    (old / "training_log.json").write_text("[]\n")
    drafts_cli.ship(str(old), "d", dtype="float32")
    assert (tmp_path / "shipped" / "d" / "training_log.json").is_file()
    new = save_draft(build_draft(draft_modeling(), llama_base, seed=1), tmp_path / "checkpoint-48")
    drafts_cli.ship(str(new), "d", dtype="float32")
    assert not (tmp_path / "shipped" / "d" / "training_log.json").exists()
    assert json.loads((tmp_path / "shipped" / "d" / "provenance.json").read_text())["shipped_from"].endswith("checkpoint-48")
