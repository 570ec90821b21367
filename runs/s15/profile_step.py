"""Where a speculative step's time goes, against the cost model's parts (session 15).

python runs/s15/profile_step.py [N_TURNS] [TREE: dynamic,depth,topk,total]
Times, per verify step: propose (draft), the base forward over the tree (verify), acceptance (head + walk),
cache keep, proposer update, and the rest; and per base-only step: the base forward and the rest.
Same prompts for both (MT-Bench turns 1-2 of the first questions, 128 new tokens)."""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import torch

from specforge_het.config import resolve
from specforge_het.inference.__main__ import load_pair
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.cache import Cache

n_q = int(sys.argv[1]) if len(sys.argv) > 1 else 2
tree = (sys.argv[2] if len(sys.argv) > 2 else "dynamic,2,3,8").split(",")
cfg, _, _ = resolve(["--@smollm2", "--@eagle_v3", "--modeling.draft_path", "smollm2-135m-instruct-eagle3",
                     "--inference.tree", tree[0], "--inference.max_depth", tree[1], "--inference.top_k", tree[2],
                     "--inference.total_tokens", tree[3]])
torch.manual_seed(0)
base, draft = load_pair(cfg, True)
spec = TreeSpec.from_config(cfg.inference)
T: dict[str, float] = defaultdict(float)


def timed(name, fn):
    def wrap(*a, **k):
        t = time.perf_counter()
        r = fn(*a, **k)
        T[name] += time.perf_counter() - t
        return r
    return wrap


prop = DraftProposer(draft, spec)
prop.propose = timed("propose", prop.propose)
prop.update = timed("update", prop.update)
orig_keep = Cache.keep if hasattr(Cache, "keep") else None
base_call = type(base).__call__


def spec_run(convs, proposer):
    dec = Decoder(base, proposer)
    dec._accept_on_host = timed("accept", dec._accept_on_host)
    dec._spec_step = timed("step", dec._spec_step)
    dec._base_step = timed("step", dec._base_step)
    type(base).__call__ = timed("base forward", base_call)
    steps, toks, wall = 0, 0, 0.0
    for c in convs:
        ids = c.render(base.tokenizer) if hasattr(c, "render") else None
        history = []
        for turn in c.turns:
            history.append({"role": "user", "content": turn})
            ids = base.tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt")
            if not isinstance(ids, torch.Tensor):
                ids = ids["input_ids"]
            T.clear()
            r = dec.generate(ids, 128)
            steps += r.steps
            toks += len(r.tokens)
            wall += r.decode_s
            history.append({"role": "assistant", "content": base.tokenizer.decode(r.tokens, skip_special_tokens=True)})
            yield ids.shape[1], r, dict(T)
    type(base).__call__ = base_call


convs = load_conversations(f"mtbench:{n_q}")
for label, p in (("base-only", None), ("spec", prop)):
    list(spec_run(convs[:1], p))  # warm-up
    agg: dict[str, float] = defaultdict(float)
    steps = toks = 0
    wall = 0.0
    for n, r, t in spec_run(convs, p):
        steps += r.steps
        toks += len(r.tokens)
        wall += r.decode_s
        for k, v in t.items():
            agg[k] += v
    print(f"\n{label}: {toks} tokens, {steps} steps, tau {toks / max(steps, 1):.2f}, {toks / wall:.2f} tok/s, "
          f"{1e3 * wall / steps:.1f} ms/step")
    for k, v in sorted(agg.items(), key=lambda kv: -kv[1]):
        print(f"  {k:14s} {1e3 * v / steps:7.2f} ms/step")
