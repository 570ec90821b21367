"""Measurements behind `--inference.tree auto`: base verify cost, draft cost, the draft's acceptance.

Everything runs on the actual device, dtype and thread count, through the same pieces the
decoder uses (BaseModel forward with a tree mask and a KV cache rolled back after each verify,
DraftProposer.propose/update), with the decoder's fast paths (--inference.fast_paths) on while
timing. The draft is only reached through DraftProposer (its protocol methods, its optional
fast-path hooks, and `true_path_ranks` for the acceptance measurement). Results are cached per (device, dtype, threads, base, draft, fast paths) in
$SPECFORGE_HET_CACHE/cost_model/ (default ~/.cache/specforge_het/cost_model/).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from specforge_het.inference.cost_model import Acceptance, Costs, acceptance_from_ranks
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.fast_paths import FastPaths, proposer_modules, tell_proposer
from specforge_het.inference.harness import decoder_method, records, timed
from specforge_het.inference.lookup_model import LookupStats, lookup_stats
from specforge_het.inference.prompts import Conversation, render
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.tree import layout_from_parents, layout_on_device

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


Job = tuple[Callable[[], object], Callable[[], object] | None]  # (timed call, untimed reset after it)


def interleaved_medians(jobs: list[Job], repeats: int, device: torch.device) -> list[float]:
    """Median wall time of each job over `repeats` rounds, after one untimed warm-up round.

    Every round times each job once, so a burst of load from other processes on a shared
    machine lands on all jobs alike instead of on whichever size was being measured.
    """
    times: list[list[float]] = [[] for _ in jobs]
    for round_ in range(repeats + 1):
        for i, (fn, reset) in enumerate(jobs):
            _, seconds = timed(fn, device)  # the evaluation harness's clock (inference/harness.py)
            if round_:
                times[i].append(seconds)
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
        cache.crop(past)

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
        cache.keep(past, path)
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
    updater = DraftProposer(draft, TreeSpec("chain", 1))
    feats = base(ctx, base.new_cache(), feature_layers=updater.feature_layers, logits="none").features[0]  # [L, F*H]
    root = int(ctx[0, -1])
    jobs: list[Job] = []
    for k in DRAFT_TOP_KS:
        for depth in (1, DEEP):
            kind = "chain" if k == 1 else "dynamic"
            proposer = DraftProposer(draft, TreeSpec(kind, depth, k, min(16, 1 + k + (depth - 1) * k * k)))
            tell_proposer(proposer, fast)
            proposer.start(ctx[0, :-1], root, feats[:-1])
            jobs.append((proposer.propose, None))  # propose() leaves the draft cache as it found it
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
    probe = DraftProposer(draft, TreeSpec("chain", 1))
    with fast.scope(base, *proposer_modules(probe)):
        verify, head, base_step = measure_verify(base, probe.feature_layers, ctx, repeats,
                                                 full_head=not fast.per_row_head)
        fixed, per_step, update = measure_draft(base, draft, ctx, repeats, fast)
    return Costs(tuple(verify), tuple(head), tuple(fixed), tuple(per_step), tuple(update), base_step)


# ---------------------------------------------------------------- acceptance


@torch.no_grad()
def truth_ranks(base, draft, prompt_ids: torch.Tensor, answer: list[int], depth: int = MAX_DEPTH,
                max_rank: int = MAX_RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """For every answer token as root, the ranks of the next `depth` true tokens, the draft fed the true path.

    Equivalent to the proposer's tree steps along the true path at every start, batched
    (`DraftProposer.true_path_ranks`). Returns (ranks [J, depth], valid [J, depth]) with
    J = len(answer) - 1 starts.
    """
    proposer = DraftProposer(draft, TreeSpec("chain", 1))
    z = torch.cat([prompt_ids[0].to(base.device), torch.tensor(answer, device=base.device)])  # [S]
    feats = base(z[None], base.new_cache(), feature_layers=proposer.feature_layers, logits="none").features[0]
    return proposer.true_path_ranks(z, feats, prompt_ids.shape[1], depth, max_rank)


def base_answers(base, prompts: list[str], inf, answer_tokens: int = ANSWER_TOKENS) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of a short greedy base answer per prompt (through the evaluation harness, untimed
    use); answers under 2 tokens are left out."""
    method = decoder_method("base-only", Decoder(base, fast_paths=inf.fast_paths))
    convs = [Conversation(str(i), [text]) for i, text in enumerate(prompts)]

    def render_chat(messages: list[dict]) -> torch.Tensor:
        return render(base.tokenizer, messages, inf.chat_template, inf.system_prompt)

    answers = [(list(rec.prompt_ids), list(rec.token_ids))
               for rec in records([method], convs, render_chat, None, answer_tokens, base.device, warmup_tokens=0)
               if len(rec.token_ids) >= 2]
    if not answers:
        raise ValueError("the calibration prompts gave no answers of 2+ tokens; pass other prompts "
                         "with --inference.auto_prompts FILE.jsonl")
    return answers


def measure_acceptance(base, draft, prompts: list[str], inf, answer_tokens: int = ANSWER_TOKENS,
                       answers: list[tuple[list[int], list[int]]] | None = None) -> Acceptance:
    """Rank the true tokens of the base's answers (`base_answers`, unless given) under the draft."""
    answers = base_answers(base, prompts, inf, answer_tokens) if answers is None else answers
    all_ranks, all_valid = [], []
    for prompt_ids, answer in answers:
        ranks, valid = truth_ranks(base, draft, torch.tensor([prompt_ids]), answer)
        all_ranks.append(ranks)
        all_valid.append(valid)
    n = sum(r.shape[0] for r in all_ranks)
    return acceptance_from_ranks(torch.cat(all_ranks), torch.cat(all_valid), MAX_RANK,
                                 f"measured on {len(prompts)} calibration prompts ({n} positions)")


def measure_lookup(answers: list[tuple[list[int], list[int]]], num_tokens: int, max_ngram: int) -> LookupStats:
    """The prompt-lookup branch along the base's answers (lookup_model.lookup_stats)."""
    return lookup_stats(answers, max_ngram, num_tokens,
                        f"lookup {num_tokens} (n-gram <= {max_ngram}) on {len(answers)} calibration answers")
