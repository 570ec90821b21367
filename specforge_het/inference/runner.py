"""The inference CLI's runs through the evaluation harness (inference/harness.py): base-only and/or
speculative decoding over conversations, each mode answering its own history, and its summary.

Only the decoding after the prompt's prefill is timed here (the decoder's own clock); the bench times
whole calls. The JSON keeps the names older lines used (`mode`, `decode_s`, `turns`) beside the harness's.
"""

from __future__ import annotations

import torch

from specforge_het.inference import harness
from specforge_het.inference.decoder import Decoder, Sampling
from specforge_het.inference.harness import Method, Record
from specforge_het.inference.prompts import Conversation, render

BASE, SPEC = "base-only", "speculative"


def make_methods(base, proposer, inf, modes: list[str]) -> list[Method]:
    """One decoder per mode, each with its own seeded generator when sampling (same draws in any order)."""
    sampling = Sampling(inf.temperature, inf.top_p, inf.top_k_sampling)
    out = []
    for mode in modes:
        gen = None
        if not sampling.greedy:
            gen = torch.Generator(device=base.device).manual_seed(inf.seed)
        decoder = Decoder(base, proposer if mode == SPEC else None, sampling, gen, inf.fast_paths)
        out.append(harness.decoder_method(mode, decoder, decode_only=True))
    return out


def run_all(base, proposer, conversations: list[Conversation], inf, modes: list[str]) -> list[Record]:
    """Modes interleaved per turn, each answering its own history, after an untimed warm-up."""
    tok = base.tokenizer

    def render_chat(messages: list[dict]) -> torch.Tensor:
        return render(tok, messages, inf.chat_template, inf.system_prompt)

    records = harness.run(make_methods(base, proposer, inf, modes), conversations, render_chat, tok,
                          inf.max_new_tokens, base.device, warmup_tokens=harness.WARMUP_TOKENS if inf.warmup else 0)
    harness.mark_identical(records, BASE)
    return records


def explain_differences(base, records: list[Record]) -> None:
    """For every speculative turn whose tokens differ from base-only: the first difference, classified as a
    near-tie flip or a real mismatch (inference/divergence.py); turns whose prompt already differs (each mode
    answers its own history) are only marked. Runs after timing: one base forward per difference."""
    harness.explain_differences(base, records, BASE)


def summarise(records: list[Record]) -> dict:
    """The harness's summary per mode (+ `turns`, `decode_s` as older lines named them); when both modes ran,
    the speculative row's comparison with base-only on top (identical, compared, near_tie, mismatch,
    prompt_differs, speedup = overall tokens/s ratio)."""
    rows = harness.summarise(records, BASE, [m for m in (BASE, SPEC) if any(r.method == m for r in records)])
    summary: dict = {mode: {**row, "turns": row["prompts"], "decode_s": row["seconds"]} for mode, row in rows.items()}
    if BASE in rows and SPEC in rows:
        spec = rows[SPEC]
        summary.update({k: spec[k] for k in ("identical", "compared", "near_tie", "mismatch", "prompt_differs")})
        summary["speedup"] = spec["speedup_overall"]
    return summary


def turn_json(record: Record) -> dict:
    """A record in the harness's JSON shape, with the names older lines used (`mode`, `decode_s`)."""
    return {**record.to_json(), "mode": record.method, "decode_s": round(record.seconds, 4)}
