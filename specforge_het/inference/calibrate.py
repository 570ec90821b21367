"""Measurements behind `--inference.tree auto`: base verify cost, draft cost, the draft's acceptance.

Everything runs on the actual device, dtype and thread count, through the same pieces the
decoder uses (BaseModel forward with a tree mask and a KV cache rolled back after each verify,
DraftProposer.propose/update), with the decoder's fast paths (--inference.fast_paths) on while
timing. Results are cached per (device, dtype, threads, base, draft, fast paths) in
$SPECFORGE_HET_CACHE/cost_model/ (default ~/.cache/specforge_het/cost_model/).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from specforge_het.inference.cost_model import Acceptance, Costs, acceptance_from_ranks
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.fast_paths import FastPaths
from specforge_het.inference.prompts import render
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import layout_from_parents, layout_on_device, stable_topk
from specforge_het.models.base import keep_cache_entries

VERIFY_SIZES = (1, 2, 4, 8, 16, 32, 64)  # tree tokens per verify, root included
HEAD_ROWS = (1, 2, 4, 8)  # base LM head rows per verify (the decoder runs it along the accepted path)
DRAFT_TOP_KS = (1, 2, 4, 8)  # nodes expanded per draft step
UPDATE_SIZES = (1, 4, 8)  # tokens committed per verify
DEEP = 4  # a proposal of this depth next to one of depth 1 gives the cost per draft step
CONTEXT = 256  # tokens in the KV cache while costs are measured
ANSWER_TOKENS = 48  # base tokens decoded per calibration prompt
MAX_DEPTH, MAX_RANK = 8, 8  # acceptance is measured this deep and this wide

# Generic calibration prompts (deliberately not from MT-Bench, GSM8K or the training prompts).
CALIBRATION_PROMPTS = (
    "Explain how a refrigerator keeps food cold, in a few sentences.",
    "Write a short, friendly email inviting a colleague to lunch on Friday.",
    "Give three tips for learning a new programming language, one sentence each.",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Job = tuple[Callable[[], object], Callable[[], object] | None]  # (timed call, untimed reset after it)


def interleaved_medians(jobs: list[Job], repeats: int, device: torch.device) -> list[float]:
    """Median wall time of each job over `repeats` rounds, after one untimed warm-up round.

    Every round times each job once, so a burst of load from other processes on a shared
    machine lands on all jobs alike instead of on whichever size was being measured.
    """
    times: list[list[float]] = [[] for _ in jobs]
    for round_ in range(repeats + 1):
        for i, (fn, reset) in enumerate(jobs):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if round_:
                times[i].append(time.perf_counter() - t0)
            if reset is not None:
                reset()
    return [statistics.median(t) for t in times]


def context_ids(base, length: int) -> torch.Tensor:
    """A realistic token sequence of `length` tokens: the calibration prompts, rendered and repeated. -> [1, L]"""
    ids = torch.cat([render(base.tokenizer, [{"role": "user", "content": p}])[0] for p in CALIBRATION_PROMPTS])
    reps = -(-length // ids.shape[0])
    return ids.repeat(reps)[:length][None].to(base.device)


def cost_context(base) -> int:
    limit = getattr(base.config, "max_position_embeddings", None) or CONTEXT + 2 * max(VERIFY_SIZES)
    return max(1, min(CONTEXT, limit - 2 * max(VERIFY_SIZES)))


# ---------------------------------------------------------------- costs


@torch.no_grad()
def measure_verify(base, layers: tuple[int, ...], ctx: torch.Tensor, repeats: int,
                   full_head: bool = False) -> tuple[list, list, float]:
    """Seconds of the base layers per tree size (decoder bookkeeping included), of the LM head per
    row count, and of one base-only step. `full_head` (fast paths off): the decoder runs the head
    over all tree rows, so it is timed inside each verify and the head-row costs are zero."""
    cache = base.new_cache()
    base(ctx, cache, feature_layers=layers, logits="last")
    past, device = ctx.shape[1], base.device
    pool = ctx[0].repeat(-(-max(VERIFY_SIZES) // past))

    def rollback():
        keep_cache_entries(cache, past, torch.empty(0, dtype=torch.long, device=device))

    def verify(n: int):
        tokens = pool[:n]
        parents = torch.tensor([-1] + [(i - 1) // 2 for i in range(1, n)], device=device)  # a bushy tree
        layout = layout_on_device(parents) if full_head else layout_from_parents(parents)  # as the decoder does
        positions = past + layout.position_offsets.to(device)
        out = base(tokens[None], cache, positions, layout.attn_mask.to(device), feature_layers=layers,
                   logits="all" if full_head else "none")
        if full_head:
            out.logits[0].argmax(-1)
        path = torch.tensor([0, 1, 3][: max(1, n.bit_length())], device=device)  # root, child, grandchild
        keep_cache_entries(cache, past, path)
        return None if out.features is None else out.features[0, path]

    hidden = base(pool[:max(HEAD_ROWS)][None], base.new_cache(), logits="none").hidden[0]  # [R, H]

    def base_step():
        base(pool[:1][None], cache, logits="all").logits[0, -1].argmax()

    jobs = [(lambda n=n: verify(n), rollback) for n in VERIFY_SIZES]
    if not full_head:
        jobs += [(lambda r=r: base.head(hidden[:r]).argmax(-1), None) for r in HEAD_ROWS]
    *times, step = interleaved_medians(jobs + [(base_step, rollback)], repeats, device)
    head = times[len(VERIFY_SIZES):] if not full_head else [0.0] * len(HEAD_ROWS)
    return list(zip(VERIFY_SIZES, times)), list(zip(HEAD_ROWS, head)), step


@torch.no_grad()
def measure_draft(base, draft, ctx: torch.Tensor, repeats: int, fast: FastPaths | None = None) -> tuple[list, list, list]:
    """Proposal seconds at depth 1 and per extra step, per top_k; update seconds per committed count.
    `fast`: the decoder's strategy the proposals run with (default: `auto` on the base's device)."""
    fast = fast or FastPaths.resolve("auto", base.device)
    layers = tuple(draft.cfg.feature_layers)
    feats = base(ctx, base.new_cache(), feature_layers=layers, logits="none").features[0]  # [L, F*H]
    root = int(ctx[0, -1])
    jobs: list[Job] = []
    for k in DRAFT_TOP_KS:
        for depth in (1, DEEP):
            kind = "chain" if k == 1 else "dynamic"
            proposer = DraftProposer(draft, TreeSpec(kind, depth, k, min(16, 1 + k + (depth - 1) * k * k)))
            proposer.use_fast_paths(fast)
            proposer.start(ctx[0, :-1], root, feats[:-1])
            jobs.append((proposer.propose, None))  # propose() leaves the draft cache as it found it
    updater = DraftProposer(draft, TreeSpec("chain", 1))
    updater.start(ctx[0, :-1], root, feats[:-1])  # each update grows its context a little: harmless
    jobs += [(lambda m=m: updater.update(ctx[0, :m], feats[:m]), None) for m in UPDATE_SIZES]
    times = interleaved_medians(jobs, repeats, base.device)
    fixed = [(k, times[2 * i]) for i, k in enumerate(DRAFT_TOP_KS)]
    per_step = [(k, max(times[2 * i + 1] - times[2 * i], 0.0) / (DEEP - 1)) for i, k in enumerate(DRAFT_TOP_KS)]
    update = list(zip(UPDATE_SIZES, times[2 * len(DRAFT_TOP_KS):]))
    return fixed, per_step, update


def measure_costs(base, draft, repeats: int = 5, fast_paths: str = "auto") -> Costs:
    """Raw measured costs (see Costs.smoothed for the non-decreasing fit the search uses), with the
    decoder's fast paths `fast_paths` applied to the base and the draft while timing."""
    ctx = context_ids(base, cost_context(base))
    fast = FastPaths.resolve(fast_paths, base.device)
    with fast.scope(base.model, draft):
        verify, head, base_step = measure_verify(base, tuple(draft.cfg.feature_layers), ctx, repeats,
                                                 full_head=not fast.per_row_head)
        fixed, per_step, update = measure_draft(base, draft, ctx, repeats, fast)
    return Costs(tuple(verify), tuple(head), tuple(fixed), tuple(per_step), tuple(update), base_step)


# ---------------------------------------------------------------- acceptance


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [S, K] -> additive mask [1, 1, S, K]."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)[None, None]


def _ranks(draft, hidden_out: torch.Tensor, truth: torch.Tensor, max_rank: int) -> torch.Tensor:
    """Rank of `truth` [J] (base ids) among the draft's top max_rank candidates from hidden_out [J, Hd]
    (max_rank = not among them). -> [J]"""
    logp = torch.log_softmax(draft.logits(hidden_out).float(), dim=-1)
    _, rows = stable_topk(logp, max_rank)  # [J, R], the proposer's order
    match = draft.to_base_ids(rows) == truth[:, None]
    return torch.where(match.any(-1), match.int().argmax(-1), torch.full_like(truth, max_rank))


@torch.no_grad()
def truth_ranks(base, draft, prompt_ids: torch.Tensor, answer: list[int], depth: int = MAX_DEPTH,
                max_rank: int = MAX_RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """For every answer token as root, the ranks of the next `depth` true tokens, the draft fed the true path.

    Equivalent to the proposer's tree steps along the true path at every start, batched: one
    draft forward per depth over all starts, each start attending its own committed prefix and chain.
    Returns (ranks [J, depth], valid [J, depth]) with J = len(answer) - 1 starts.
    """
    d, device = draft, base.device
    z = torch.cat([prompt_ids[0].to(device), torch.tensor(answer, device=device)])  # [S]
    s, n = z.shape[0], prompt_ids.shape[1]
    feats = base(z[None], base.new_cache(), feature_layers=tuple(d.cfg.feature_layers), logits="none").features[0]
    m, dtype = s - 1, d.fc.weight.dtype  # committed pairs (z[i+1], feats[i])
    cache = DynamicCache()
    hidden_in = d.input_from_base(z[None, 1:], feats[None, :m].to(dtype))
    causal = torch.ones(m, m, dtype=torch.bool, device=device).tril()
    h = d(z[None, 1:], hidden_in, torch.arange(m, device=device)[None], _additive(causal, dtype), cache)[0]
    roots = torch.arange(n, s - 1, device=device)  # root z[p] has pairs 0..p-1 committed
    j = roots.shape[0]
    ranks = torch.full((j, depth), max_rank, dtype=torch.long, device=device)
    valid = (roots[:, None] + torch.arange(1, depth + 1, device=device)[None]) <= s - 1  # [J, D]
    truth = lambda k: z[(roots + k).clamp_max(s - 1)]  # noqa: E731  true token at depth k
    ranks[:, 0] = _ranks(d, h[roots - 1], truth(1), max_rank)
    parent = h[roots - 1]
    committed = torch.arange(m, device=device)[None] < roots[:, None]  # [J, m]
    own = torch.eye(j, dtype=torch.bool, device=device)
    for k in range(1, depth):  # feed depth-k nodes, read depth-(k+1) ranks
        allowed = torch.cat([committed] + [own] * k, dim=1)  # [J, m + J*k]
        feed = truth(k)
        hidden_in = d.input_from_self(feed[None], parent[None])
        out = d(feed[None], hidden_in, (roots + k - 1)[None], _additive(allowed, dtype), cache)[0]  # [J, Hd]
        ranks[:, k] = _ranks(d, out, truth(k + 1), max_rank)
        parent = out
    return ranks.cpu(), valid.cpu()


def measure_acceptance(base, draft, prompts: list[str], inf, answer_tokens: int = ANSWER_TOKENS) -> Acceptance:
    """Decode a short base answer per prompt (greedy), then rank the true tokens under the draft."""
    all_ranks, all_valid = [], []
    for text in prompts:
        ids = render(base.tokenizer, [{"role": "user", "content": text}], inf.chat_template, inf.system_prompt)
        answer = Decoder(base, fast_paths=inf.fast_paths).generate(ids, answer_tokens).tokens
        if len(answer) < 2:
            continue
        ranks, valid = truth_ranks(base, draft, ids, answer)
        all_ranks.append(ranks)
        all_valid.append(valid)
    if not all_ranks:
        raise ValueError("the calibration prompts gave no answers of 2+ tokens; pass other prompts "
                         "with --inference.auto_prompts FILE.jsonl")
    n = sum(r.shape[0] for r in all_ranks)
    return acceptance_from_ranks(torch.cat(all_ranks), torch.cat(all_valid), MAX_RANK,
                                 f"measured on {len(prompts)} calibration prompts ({n} positions)")
