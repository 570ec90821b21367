"""Sampled completions of many prompts at once, one seed per row (the engine of `gen_prompts`).

Each row samples with its own temperature and `torch.Generator`, so a row's output depends on its
seed and prompt only, not on which rows share its batch. Llama/Qwen3/Gemma3 models run through the
continuous-batching engine (data/batch_gen.py); others through HF `generate` with `_RowSampler`.
"""

from __future__ import annotations

from typing import Any

import torch

from specforge_het.data.batch_gen import draw
from specforge_het.models.lean import cuda_sdpa_kernels


class _RowSampler:
    """Logits processor: each unfinished row draws its token by inverse-CDF sampling with one uniform
    from its own generator, at its own temperature (top-p optional), and leaves only that token; HF's
    greedy step then picks it. Softmax, sort and search run on the whole batch at once."""

    def __init__(self, gens: list[torch.Generator], temps: list[float], top_p: float, width: int, stop: torch.Tensor):
        self.gens, self.top_p, self.width, self.stop = gens, top_p, width, stop
        self.temps = torch.tensor(temps, dtype=torch.float32, device=stop.device)  # [B]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ended = torch.isin(input_ids[:, self.width:], self.stop).any(dim=1, keepdim=True)  # [B, 1]
        probs = torch.softmax(scores.float() / self.temps.clamp_min(1e-5)[:, None], dim=-1)  # [B, V]
        u = torch.stack([torch.rand((), generator=g) for g in self.gens]).to(probs.device)  # [B], one draw per row
        token = draw(probs, u, self.top_p)
        token = torch.where(self.temps[:, None] <= 0, scores.argmax(-1, keepdim=True), token)
        if self.stop.numel():
            token = torch.where(ended, self.stop[:1].expand_as(token), token)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


@torch.no_grad()
def complete(model: Any, prompt_ids: list[list[int]], max_new_tokens: int, temperatures: list[float],
             seeds: list[int], stop_ids: list[int], pad_id: int, top_p: float = 1.0, slots: int = 0) -> list[list[int]]:
    """Sampled continuations of each prompt (HF `generate`, one left-padded batch): the new ids of
    every row, up to and including its first stop id, or `max_new_tokens` ids. Row i samples with its
    own temperature and `torch.Generator` seeded with seeds[i], so a row's output depends on its
    seed, not on the other rows' draws. Llama/Qwen3/Gemma3 models run through the continuous-batching
    engine (data/batch_gen.py, `slots` rows at a time; 0 = all); others through HF `generate`."""
    from transformers import GenerationConfig, LogitsProcessorList

    from specforge_het.data.batch_gen import BatchGenerator, Request, supports_batch_gen
    from specforge_het.models.base import BaseModel

    base = BaseModel(model)
    if supports_batch_gen(base):
        capacity = max(len(p) for p in prompt_ids) + max_new_tokens + 1
        engine = BatchGenerator(base, slots or len(prompt_ids), stop_ids, capacity)
        out: dict[int, list[int]] = {}
        engine.run([Request(i, p, max_new_tokens, t, torch.Generator("cpu").manual_seed(int(s)), top_p)
                    for i, (p, t, s) in enumerate(zip(prompt_ids, temperatures, seeds))],
                   lambda r: out.__setitem__(r.key, r.tokens) or [])  # type: ignore[func-returns-value, index]
        return [out[i] for i in range(len(prompt_ids))]

    device = next(model.parameters()).device
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)  # [B, L] left-padded
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                          eos_token_id=list(stop_ids) or None)
    with cuda_sdpa_kernels(device.type):
        seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gc,
                              logits_processor=LogitsProcessorList([_RowSampler(gens, temperatures, top_p, width, stop)]))
    rows = []
    for row in seqs[:, width:].tolist():
        cut = next((j for j, t in enumerate(row) if t in set(stop_ids)), None)
        rows.append(row if cut is None else row[: cut + 1])
    return rows
