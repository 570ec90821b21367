"""In-process generation for `gen_dataset`: the base model answers conversations in this process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from specforge_het.chat import eos_ids, render
from specforge_het.config import Config
from specforge_het.data.gen_common import (
    Conv,
    RunStats,
    commit,
    console,
    finalize,
    part_size,
    progress_bar,
    resolved_dtype,
)
from specforge_het.models.lean import cuda_sdpa_kernels

if TYPE_CHECKING:
    from specforge_het.data.batch_gen import BatchGenerator

FEATURE_TOKENS = 8192  # padded tokens per feature forward (bounds its activations)


class _PerRowSampler:
    """A logits processor that samples each row with its own generator and leaves only that token.

    HF's greedy step then picks it, so every conversation's draws come from its own seeded stream,
    whatever else shares its batch. Rows that already ended draw nothing.
    """

    def __init__(self, gens: list[torch.Generator], temperature: float, prompt_len: int, eos: torch.Tensor):
        self.gens, self.temperature, self.prompt_len, self.eos = gens, temperature, prompt_len, eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ended = torch.isin(input_ids[:, self.prompt_len:], self.eos).any(dim=1)  # [B]
        out = torch.full_like(scores, float("-inf"))
        for i, gen in enumerate(self.gens):
            if ended[i]:
                out[i] = scores[i]
                continue
            probs = torch.softmax(scores[i].float() / self.temperature, dim=-1)  # [V]
            out[i, torch.multinomial(probs, 1, generator=gen)] = 0.0
        return out


class LocalEngine:
    """The base model in this process.

    Llama, Qwen3 and Gemma3 bases run through continuous batching (data/batch_gen.py): `batch_size`
    rows decode together, a finished row takes the next waiting prompt at once, and a conversation's
    next turn joins the queue when its previous answer ends. Conversations are committed in parts
    of `part_size` (index // part_size), so a killed run redoes at most one part and gives the same
    dataset. Other families use HF `generate` on left-padded batches of `batch_size`.
    """

    def __init__(self, cfg: Config):
        from specforge_het.data.batch_gen import supports_batch_gen
        from specforge_het.models.base import BaseModel

        m = cfg.modeling
        self.cfg, self.g = cfg, cfg.dataset_generation
        self.dtype = resolved_dtype(cfg)
        self.base = BaseModel.from_config(m, dtype=self.dtype)  # device_map / max_memory may shard it
        self.tokenizer = self.base.tokenizer
        self.num_layers = self.base.num_layers
        self.eos = sorted(eos_ids(self.base))
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else (self.eos[0] if self.eos else 0)
        self.continuous = supports_batch_gen(self.base)
        self._batcher: BatchGenerator | None = None

    def describe(self) -> dict:
        return self.base.describe()

    def run(self, out: Path, todo: list[Conv], layers: list[int], report, stats: RunStats) -> None:
        size = part_size(self.g) if self.continuous else self.g.batch_size
        parts: dict[int, list[Conv]] = {}
        for c in todo:
            parts.setdefault(c.index // size, []).append(c)
        with progress_bar() as bar:
            task = bar.add_task("generating", total=len(todo), note="")

            def done(n: int) -> None:
                rate = stats.new_tokens / max(time.perf_counter() - stats.started, 1e-9)
                bar.update(task, advance=n, note=f"{stats.new_tokens} new tokens, {rate:.0f} tok/s")

            for part in parts.values():
                if self.continuous:
                    self.answer_continuous(part, lambda c: done(1))
                else:
                    self.answer(part)
                    done(len(part))
                rows, skipped = finalize(self.tokenizer, part, self.g.max_length, report)
                feats = self.features(rows, layers) if layers else None
                commit(out, part, rows, skipped, feats, stats)
                bar.update(task, note=f"{stats.new_tokens} new tokens (committed)")

    def _prompt(self, c: Conv, k: int) -> list[int] | None:
        """Token ids of turn k's prompt, or None (and the conversation skipped) when nothing fits."""
        ids = render(self.tokenizer, c.messages(k))[0].tolist()
        if len(ids) >= self.g.max_length:
            c.skipped = f"too long: turn {k} prompt has {len(ids)} tokens, max_length {self.g.max_length}"
            return None
        return ids

    def _budget(self, prompt_len: int) -> int:
        """New tokens for a turn: max_new_tokens, capped by what still fits in max_length."""
        return max(1, min(self.g.max_new_tokens, self.g.max_length - prompt_len))

    def answer_continuous(self, part: list[Conv], on_conv_done) -> None:
        """Every turn of every conversation of `part` through the continuous batcher."""
        from specforge_het.data.batch_gen import BatchGenerator, Request

        if self._batcher is None:
            self._batcher = BatchGenerator(self.base, self.g.batch_size, self.eos, self.g.max_length)
            if self._batcher.memory_note:
                console.print(f"[yellow]warning:[/] {self._batcher.memory_note}", soft_wrap=True)
        batcher = self._batcher
        by_index = {c.index: c for c in part}
        temp = self.g.temperature

        prompts: dict[tuple[int, int], list[int]] = {}

        def request(c: Conv, k: int, gen) -> Request | None:
            ids = self._prompt(c, k)
            if ids is None:
                return None
            prompts[(c.index, k)] = ids
            return Request((c.index, k), ids, self._budget(len(ids)), temp, gen)

        first = []
        for c in part:
            gen = torch.Generator().manual_seed(self.cfg.inference.seed + c.index) if temp > 0 else None
            r = request(c, 0, gen)
            if r is None:
                on_conv_done(c)
            else:
                first.append(r)
        gens = {r.key[0]: r.generator for r in first}  # type: ignore[index]  # keys are (index, turn)

        def on_done(res) -> list:
            index, k = res.key
            c = by_index[index]
            toks = res.tokens[:-1] if res.finish_reason == "stop" else res.tokens
            c.answers.append(self.tokenizer.decode(toks, skip_special_tokens=True))
            c.finish.append(res.finish_reason)
            c.last_turn = (prompts.pop(res.key), list(res.tokens))
            c.new_tokens += len(res.tokens)
            if res.finish_reason == "stop" and k + 1 < len(c.users):  # a cut answer ends the conversation
                nxt = request(c, k + 1, gens[index])
                if nxt is not None:
                    return [nxt]
            on_conv_done(c)
            return []

        batcher.run(first, on_done)

    def answer(self, batch: list[Conv]) -> None:
        """HF `generate` path: turn k of every conversation in the batch, in one generate call."""
        gens = {c.index: torch.Generator(self.base.device).manual_seed(self.cfg.inference.seed + c.index)
                for c in batch}
        for k in range(max((len(c.users) for c in batch), default=0)):
            active, prompts = [], []
            for c in batch:
                if c.skipped or k >= len(c.users) or c.finish_reason == "length":
                    continue
                ids = self._prompt(c, k)
                if ids is not None:
                    active.append(c)
                    prompts.append(ids)
            if active:
                for c, ids, (new, reason) in zip(active, prompts, self.generate(prompts, [gens[c.index] for c in active])):
                    c.answers.append(self.tokenizer.decode(new[:-1] if reason == "stop" else new, skip_special_tokens=True))
                    c.finish.append(reason)
                    c.last_turn = (ids, new)
                    c.new_tokens += len(new)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], gens: list[torch.Generator]) -> list[tuple[list[int], str]]:
        """Generated ids of each prompt (with the stop token when one ended it) and 'stop' | 'length'."""
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)  # [B, L] left-padded
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        eos = torch.tensor(self.eos, dtype=torch.long, device=self.base.device)
        gc = GenerationConfig(max_new_tokens=self._budget(width), do_sample=False, pad_token_id=self.pad,
                              eos_token_id=self.eos or None)
        procs = [_PerRowSampler(gens, self.g.temperature, width, eos)] if self.g.temperature > 0 else []
        with cuda_sdpa_kernels(self.base.device.type):
            seqs = self.base.model.generate(input_ids=ids.to(self.base.device), attention_mask=mask.to(self.base.device),
                                            generation_config=gc, logits_processor=LogitsProcessorList(procs))
        out = []
        for row in seqs[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in self.eos), None)
            out.append((row, "length") if cut is None else (row[: cut + 1], "stop"))
        return out

    @torch.no_grad()
    def features(self, rows: list[dict], layers: list[int]) -> dict[str, torch.Tensor]:
        """Forwards over the final ids (right-padded groups of at most FEATURE_TOKENS tokens, in part order):
        {str(index): [T, F*H] in feature_dtype}."""
        from specforge_het.models.base import resolve_dtype

        dtype, out = resolve_dtype(self.g.feature_dtype), {}
        group: list[dict] = []
        for r in [*rows, None]:
            width = max([len(x["input_ids"]) for x in group] + ([len(r["input_ids"])] if r else [0]))
            if group and (r is None or width * (len(group) + 1) > FEATURE_TOKENS):
                out.update(self._features(group, layers, dtype))
                group = []
            if r is not None:
                group.append(r)
        return out

    def _features(self, rows: list[dict], layers: list[int], dtype) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)  # [B, T] right-padded
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        dev = self.base.device
        feats = self.base.features(ids.to(dev), tuple(layers), attention_mask=mask.to(dev), head=False).features  # [B, T, F*H]
        return {str(r["index"]): feats[i, : len(r["input_ids"])].to(dtype).cpu() for i, r in enumerate(rows)}
