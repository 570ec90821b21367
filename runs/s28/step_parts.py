"""Session 28: where a speculative step's time goes (shipped SmolLM2 draft, greedy, fast paths auto), timed
inside the step itself: propose, base verify forward, acceptance walk (LM head rows), cache keep, draft update.
(runs/s27/step_parts.py wrapped methods instead, so its draft update also counted the draft's prompt start.)
    .venv/bin/python runs/s28/step_parts.py [N] [MAX_NEW] [FAST_PATHS]
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict

import torch

from specforge_het.algorithms.io import load_draft
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import layout_from_parents
from specforge_het.models.base import BaseModel

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4
MODE = sys.argv[3] if len(sys.argv) > 3 else "auto"  # the decoder's fast paths (session 28: compile)
MAX_NEW = int(sys.argv[2]) if len(sys.argv) > 2 else 96
spent: dict[str, float] = defaultdict(float)


def spec_step(self, cache, result):  # Decoder._spec_step (greedy, host acceptance) with a clock between parts
    t = [time.perf_counter()]
    lap = lambda name: (spent.__setitem__(name, spent[name] + time.perf_counter() - t[0]), t.__setitem__(0, time.perf_counter()))  # noqa: E731
    proposal = self.proposer.propose()
    lap("propose")
    tokens, parents = proposal.tokens, proposal.parents
    layout = layout_from_parents(parents)
    past = cache.get_seq_length()
    positions = past + layout.position_offsets
    lap("layout")
    out = self.base(tokens[None], cache, positions, layout.attn_mask, feature_layers=self.proposer.feature_layers,
                    logits="none")
    lap("base forward")
    path, path_ids, new, new_ids = self._accept_on_host(tokens, parents, out.hidden[0], None)
    lap("accept (head rows)")
    cache.keep(past, path, path_ids == list(range(len(path_ids))))
    lap("cache keep")
    self.proposer.update(new, out.features[0, path])
    lap("draft update")
    result.accept_lengths.append(len(path_ids))
    return new_ids


def base_step(self, cache, result):
    t0 = time.perf_counter()
    last = torch.tensor([[result.tokens[-1]]])
    out = self.base(last, cache, logits="none")
    t1 = time.perf_counter()
    tok = int(self.base.head(out.hidden[0, -1:]).argmax())
    spent["base forward"] += t1 - t0
    spent["head"] += time.perf_counter() - t1
    result.accept_lengths.append(1)
    return [tok]


Decoder._spec_step, Decoder._base_step = spec_step, base_step
base = BaseModel.load("smollm2-135m-instruct")
draft = load_draft("specforge_het/drafts/smollm2-135m-instruct-eagle3", base).eval()
convs = load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")
for spec in (None, TreeSpec("dynamic", 2, 3, 6), TreeSpec("dynamic", 5, 4, 12)):
    proposer = None if spec is None else DraftProposer(draft, spec)
    dec = Decoder(base, proposer, fast_paths=MODE)
    for conv in convs[:2]:  # warm-up: kernels measured per row bucket
        dec.generate(render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}]), 32)
    spent.clear()
    steps, decode, toks = 0, 0.0, 0
    for conv in convs:
        res = dec.generate(render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}]), MAX_NEW)
        steps, decode, toks = steps + res.steps, decode + res.decode_s, toks + len(res.tokens) - 1
    name = "base-only" if spec is None else f"d{spec.max_depth} k{spec.top_k} n{spec.total_tokens}"
    parts = ", ".join(f"{k} {1e3 * v / steps:.2f}" for k, v in spent.items())
    print(f"{name}: {1e3 * decode / steps:.1f} ms/step, tau {toks / steps:.2f}, {steps} steps; {parts}; "
          f"rest {1e3 * (decode - sum(spent.values())) / steps:.2f}", flush=True)
