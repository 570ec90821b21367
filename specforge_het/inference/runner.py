"""Run base-only and/or speculative decoding over conversations, turn by turn, and collect figures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from rich.progress import Progress

from specforge_het.inference.decoder import Decoder, GenerationResult, Sampling
from specforge_het.inference.divergence import Divergence, explain_divergence
from specforge_het.inference.prompts import Conversation, render

BASE, SPEC = "base-only", "speculative"


@dataclass
class TurnRecord:
    conversation: str
    turn: int
    mode: str
    prompt_tokens: int
    new_tokens: int
    decode_s: float
    accept_lengths: list[int]
    text: str
    token_ids: list[int] = field(repr=False, default_factory=list)
    prompt_ids: list[int] = field(repr=False, default_factory=list)
    divergence: Divergence | None = None  # speculative only: why it differs from base-only (explain_differences)
    prompt_differs: bool = False  # speculative only: its prompt differs (an earlier turn's answer did)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s else float("nan")

    @property
    def tau(self) -> float:
        return sum(self.accept_lengths) / max(len(self.accept_lengths), 1)

    def to_json(self) -> dict:
        return {
            "conversation": self.conversation, "turn": self.turn, "mode": self.mode,
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "decode_s": round(self.decode_s, 4),
            "tokens_per_s": round(self.tokens_per_s, 3), "tau": round(self.tau, 3),
            "accept_length_histogram": dict(sorted(Counter(self.accept_lengths).items())), "text": self.text,
            "divergence": None if self.divergence is None else self.divergence.to_json(),
            "prompt_differs": self.prompt_differs,
        }


def make_decoders(base, proposer, inf, modes: list[str]) -> dict[str, Decoder]:
    sampling = Sampling(inf.temperature, inf.top_p, inf.top_k_sampling)
    out = {}
    for mode in modes:
        gen = None
        if not sampling.greedy:
            gen = torch.Generator(device=base.device).manual_seed(inf.seed)
        out[mode] = Decoder(base, proposer if mode == SPEC else None, sampling, gen, inf.fast_paths)
    return out


def run_conversation(decoder: Decoder, tokenizer, conv: Conversation, mode: str, inf) -> list[TurnRecord]:
    messages: list[dict] = []
    records = []
    for k, user in enumerate(conv.turns):
        messages.append({"role": "user", "content": user})
        ids = render(tokenizer, messages, inf.chat_template, inf.system_prompt)
        res: GenerationResult = decoder.generate(ids, inf.max_new_tokens)
        text = tokenizer.decode(res.tokens, skip_special_tokens=True)
        messages.append({"role": "assistant", "content": text})
        records.append(TurnRecord(conv.id, k, mode, ids.shape[1], len(res.tokens), res.decode_s,
                                  res.accept_lengths, text, res.tokens, ids[0].tolist()))
    return records


def warm_up(decoders: dict[str, Decoder], tokenizer, conv: Conversation, inf) -> None:
    ids = render(tokenizer, [{"role": "user", "content": conv.turns[0]}], inf.chat_template, inf.system_prompt)
    for dec in decoders.values():
        dec.generate(ids, min(8, inf.max_new_tokens))


def run_all(base, proposer, conversations: list[Conversation], inf, modes: list[str]) -> list[TurnRecord]:
    """Modes interleaved per conversation, after an untimed warm-up."""
    decoders = make_decoders(base, proposer, inf, modes)
    if inf.warmup:
        warm_up(decoders, base.tokenizer, conversations[0], inf)
    records: list[TurnRecord] = []
    total = sum(len(c.turns) for c in conversations) * len(modes)
    with Progress(transient=True) as progress:
        task = progress.add_task("decoding", total=total)
        for conv in conversations:
            for mode in modes:
                progress.update(task, description=f"{mode} · conversation {conv.id}")
                recs = run_conversation(decoders[mode], base.tokenizer, conv, mode, inf)
                records.extend(recs)
                progress.advance(task, len(recs))
    return records


def explain_differences(base, records: list[TurnRecord]) -> None:
    """For every speculative turn whose tokens differ from base-only: the first difference, classified as a
    near-tie flip or a real mismatch (inference/divergence.py); turns whose prompt already differs (each mode
    answers its own history) are only marked. Runs after timing: one base forward per difference."""
    pairs = {(r.conversation, r.turn): r for r in records if r.mode == BASE}
    for r in records:
        ref = pairs.get((r.conversation, r.turn))
        if r.mode != SPEC or ref is None or ref.token_ids == r.token_ids:
            continue
        if ref.prompt_ids != r.prompt_ids:
            r.prompt_differs = True
        else:
            r.divergence = explain_divergence(base, ref.prompt_ids, ref.token_ids, r.token_ids)


def summarise(records: list[TurnRecord]) -> dict:
    """Per-mode totals; speed-up and identical outputs when both modes ran."""
    summary: dict = {}
    for mode in (BASE, SPEC):
        recs = [r for r in records if r.mode == mode]
        if not recs:
            continue
        toks, secs = sum(r.new_tokens for r in recs), sum(r.decode_s for r in recs)
        lengths = [a for r in recs for a in r.accept_lengths]
        summary[mode] = {
            "turns": len(recs), "new_tokens": toks, "decode_s": round(secs, 3),
            "tokens_per_s": round(toks / secs, 3) if secs else None,
            "tau": round(sum(lengths) / max(len(lengths), 1), 3),
            "accept_length_histogram": dict(sorted(Counter(lengths).items())),
        }
    if BASE in summary and SPEC in summary:
        pairs = {(r.conversation, r.turn): r for r in records if r.mode == BASE}
        same = [pairs[(r.conversation, r.turn)].token_ids == r.token_ids for r in records if r.mode == SPEC]
        summary["identical"] = sum(same)
        summary["compared"] = len(same)
        spec = [r for r in records if r.mode == SPEC]
        summary["near_tie"] = sum(r.divergence is not None and r.divergence.near_tie for r in spec)
        summary["mismatch"] = sum(r.divergence is not None and not r.divergence.near_tie for r in spec)
        summary["prompt_differs"] = sum(r.prompt_differs for r in spec)
        b, s = summary[BASE]["tokens_per_s"], summary[SPEC]["tokens_per_s"]
        summary["speedup"] = round(s / b, 3) if b and s else None
    return summary
