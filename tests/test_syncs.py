"""Host reads per decoding step (inference/syncs.py): the device strategy (what a GPU runs; here
`fast_paths off` on the CPU) reads the device at most MAX_READS times per speculative step, and its
greedy output is still base-only greedy output, token for token, in float32."""

from __future__ import annotations

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling

from specforge_het.algorithms.build import build_draft
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.lookup import LookupProposer
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.syncs import count_host_syncs, step_syncs

MAX_READS = 6  # issue 14: at most 6 host-device syncs per step on a GPU
DYNAMIC = TreeSpec("dynamic", max_depth=5, top_k=4, total_tokens=16)
TREES = {
    "dynamic": DYNAMIC,
    "chain": TreeSpec("chain", max_depth=4),
    "static": TreeSpec("static", static_tree="eagle1_small"),
}


def _ids(tok, text: str = "A draft tree is verified in one forward pass with a tree attention mask."):
    return tok(text, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def drafts(bases, tok_b_dir):
    return {(fam, kind): build_draft(draft_modeling(**spec, tok_dir=tok_b_dir), bases[fam], seed=0).eval()
            for fam in ("llama", "gemma3") for kind, spec in DRAFT_KINDS.items()}


def test_counter_counts_every_kind_of_read() -> None:
    x = torch.arange(4)
    with count_host_syncs() as c:
        x[1].item(), x.tolist(), int(x[2]), bool(x[3]), float(x[0]), [0, 1, 2][x[1]]
        x.sum() + 1  # device-side arithmetic reads nothing
    assert c.total_reads == 6 and c.cuda is None
    assert dict(c.reads) == {"item": 1, "tolist": 1, "__int__": 1, "__bool__": 1, "__float__": 1, "__index__": 1}
    assert torch.Tensor.item is not None and int(x[1]) == 1  # methods restored
    with count_host_syncs() as c:
        pass
    assert c.total_reads == 0


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_device_strategy_reads_at_most_six_per_step(bases, drafts, tok_a, family, kind) -> None:
    base = bases[family]
    ids = _ids(tok_a)
    ref = Decoder(base).generate(ids, 24).tokens
    decoder = Decoder(base, DraftProposer(drafts[(family, kind)], DYNAMIC), fast_paths="off")
    counts = step_syncs(decoder, ids, 24)
    assert counts.steps >= 2 and counts.cuda is None
    assert counts.max_per_step <= MAX_READS, counts.to_json()
    assert decoder.generate(ids, 24).tokens == ref  # and still base-only greedy output


def test_step_syncs_sees_an_added_read(bases, drafts, tok_a, monkeypatch) -> None:
    """The count is real: one more `.item()` per step in the proposer shows up in every step."""
    base = bases["llama"]
    proposer = DraftProposer(drafts[("llama", "eagle_v3_reduced")], DYNAMIC)
    decoder = Decoder(base, proposer, fast_paths="off")
    before = step_syncs(decoder, _ids(tok_a), 16)
    update = proposer.update
    monkeypatch.setattr(proposer, "update", lambda new, feats: (new[-1].item(), update(new, feats)))
    after = step_syncs(decoder, _ids(tok_a), 16)
    assert after.reads == [r + 1 for r in before.reads]
    assert "_spec_step" not in decoder.__dict__


def test_cpu_strategy_reads_more(bases, drafts, tok_a) -> None:
    """The CPU strategy walks acceptance on the host (free there): many reads, same tokens."""
    base = bases["llama"]
    draft = drafts[("llama", "eagle_v3_reduced")]
    cpu = step_syncs(Decoder(base, DraftProposer(draft, DYNAMIC), fast_paths="auto"), _ids(tok_a), 16)
    dev = step_syncs(Decoder(base, DraftProposer(draft, DYNAMIC), fast_paths="off"), _ids(tok_a), 16)
    assert cpu.max_per_step > MAX_READS >= dev.max_per_step
    assert cpu.by_kind and set(dev.by_kind) <= {"tolist"}


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("kind", list(DRAFT_KINDS))
def test_device_strategy_greedy_equals_base_only(bases, drafts, tok_a, kind, tree) -> None:
    """float32: speculative greedy output on the device strategy == base-only greedy, on every tree shape,
    with and without the prompt-lookup branch; gemma3's sliding window (16) is crossed."""
    base = bases["gemma3"]
    ids = _ids(tok_a, "Explain how a transformer layer works, step by step. Write a short poem about the sea.")
    ref = Decoder(base, fast_paths="off").generate(ids, 32).tokens
    assert ref == Decoder(base).generate(ids, 32).tokens
    proposer = DraftProposer(drafts[("gemma3", kind)], TREES[tree])
    assert Decoder(base, proposer, fast_paths="off").generate(ids, 32).tokens == ref
    lookup = LookupProposer(proposer, 6, 3, base.device)
    assert Decoder(base, lookup, fast_paths="off").generate(ids, 32).tokens == ref


def test_base_only_step_reads(bases, tok_a) -> None:
    counts = step_syncs(Decoder(bases["llama"], fast_paths="off"), _ids(tok_a), 8)
    assert counts.steps == 7 and counts.max_per_step == 1  # the chosen token
