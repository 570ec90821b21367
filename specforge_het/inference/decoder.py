"""The decoder loop: prefill, then { propose draft tree -> verify -> accept -> keep accepted KV }.

Base-only decoding (`proposer=None`) runs through the same prefill, cache, sampling and
stopping code, one base token per step. Batch size 1.

CPU fast paths (packed linears, the per-row LM head) are strategies the caller picks
(`fast_paths`, inference/fast_paths.py): the packed linears are applied for the duration of
`generate` only; host acceptance goes through the verification strategy they name
(`self.verifier`, inference/verify.py). Caches are used through `models.cache.Cache` only.
The device strategy (`off`, or `auto` on an accelerator) keeps a speculative step on the device:
tree, layout and greedy acceptance there, one host read of the step's outcome
(inference/syncs.py counts the reads per step).

The proposer is anything implementing the Proposer protocol (inference/protocol.py); its
`Proposal` may carry draft probabilities q, which sampling uses (SpecInfer's rule with q, on the
host, with either LM-head strategy); greedy decoding ignores them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from specforge_het.chat import eos_ids as eos_ids  # the one end-of-sequence rule; re-exported for the bench
from specforge_het.inference.accept import greedy_accept_on_device, sampling_probs
from specforge_het.inference.fast_paths import FastPaths, proposer_modules, tell_proposer
from specforge_het.inference.tree import check_parent_list, layout_from_parents, layout_on_device
from specforge_het.models.cache import Cache
from specforge_het.models.lean import cuda_sdpa_kernels


class ContextTooLongError(ValueError):
    pass


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens (EOS included when it stopped there)
    accept_lengths: list[int] = field(default_factory=list)  # tokens committed per verify step
    decode_s: float = 0.0  # wall time after the prompt's prefill
    prefill_s: float = 0.0
    stopped_at_eos: bool = False

    @property
    def steps(self) -> int:
        return len(self.accept_lengths)

    @property
    def mean_accept_length(self) -> float:
        return sum(self.accept_lengths) / max(len(self.accept_lengths), 1)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.decode_s if self.decode_s > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Decoder:
    """Speculative decoding when a proposer is given, base-only decoding otherwise."""

    def __init__(self, base, proposer=None, sampling: Sampling | None = None, generator: torch.Generator | None = None,
                 fast_paths: str = "auto"):
        self.base, self.proposer = base, proposer
        self.fast = FastPaths.resolve(fast_paths, base.device)
        self.verifier = self.fast.verifier()  # host acceptance: LM head over all rows, or per row (verify.py)
        self.sampling = sampling or Sampling()
        self.generator = generator
        if not self.sampling.greedy and generator is None:
            raise ValueError("sampling needs an explicit torch.Generator")
        self.eos = eos_ids(base)

    def _choose(self, logits: torch.Tensor) -> int:
        """Next token from base logits [V]."""
        if self.sampling.greedy:
            return int(logits.argmax())
        return int(torch.multinomial(self._probs(logits), 1, generator=self.generator))

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Sampling probabilities [..., V] from base logits [..., V] (temperature, top-k, top-p)."""
        s = self.sampling
        return sampling_probs(logits, s.temperature, s.top_p, s.top_k)

    def _check_length(self, n: int, max_new_tokens: int, lookahead: int) -> None:
        limit = getattr(self.base.config, "max_position_embeddings", None)
        if limit and n + max_new_tokens + lookahead > limit:
            raise ContextTooLongError(
                f"prompt of {n} tokens + max_new_tokens {max_new_tokens} (+{lookahead} draft tokens) exceeds the base "
                f"context of {limit} positions. Shorten the prompt or lower --inference.max_new_tokens."
            )

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> GenerationResult:
        """input_ids [1, n] -> new tokens. The fast paths are on for this call only."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"batch size 1 is supported; got input_ids of shape {tuple(input_ids.shape)}")
        lookahead = 0 if self.proposer is None else self.proposer.depth() + 1
        self._check_length(input_ids.shape[1], max_new_tokens, lookahead)
        tell_proposer(self.proposer, self.fast)
        kernels = cuda_sdpa_kernels(self.base.device.type)
        with self.fast.scope(self.base, *proposer_modules(self.proposer)), kernels:
            return self._generate(input_ids, max_new_tokens, lookahead)

    def _generate(self, input_ids: torch.Tensor, max_new_tokens: int, lookahead: int) -> GenerationResult:
        device = self.base.device
        input_ids = input_ids.to(device)
        layers = () if self.proposer is None else self.proposer.feature_layers
        _sync(device)
        t0 = time.perf_counter()
        cache = self.base.new_cache(input_ids.shape[1] + max_new_tokens + 2 * lookahead + 1)
        out = self.base(input_ids, cache, feature_layers=layers, logits="last")
        root = self._choose(out.logits[0, -1])
        if self.proposer is not None:
            self.proposer.start(input_ids[0], root, None if out.features is None else out.features[0])
        _sync(device)
        t1 = time.perf_counter()
        result = GenerationResult(tokens=[root], prefill_s=t1 - t0)
        step = self._base_step if self.proposer is None else self._spec_step
        stop = root in self.eos
        while not stop and len(result.tokens) < max_new_tokens:
            new = step(cache, result)
            result.tokens.extend(new)
            stop = any(t in self.eos for t in new)
        self._truncate(result, max_new_tokens)
        _sync(device)
        result.decode_s = time.perf_counter() - t1
        return result

    def _truncate(self, r: GenerationResult, max_new_tokens: int) -> None:
        """Cut to the limit first (a step may overshoot it), then stop after the first EOS."""
        r.tokens = r.tokens[:max_new_tokens]
        for i, t in enumerate(r.tokens):
            if t in self.eos:
                r.tokens, r.stopped_at_eos = r.tokens[: i + 1], True
                break

    def _base_step(self, cache: Cache, result: GenerationResult) -> list[int]:
        last = torch.tensor([[result.tokens[-1]]], device=self.base.device)
        out = self.base(last, cache, logits="all")
        result.accept_lengths.append(1)
        return [self._choose(out.logits[0, -1])]

    def _spec_step(self, cache: Cache, result: GenerationResult) -> list[int]:
        proposal = self.proposer.propose()
        tokens, parents = proposal.tokens, proposal.parents  # [N] base ids, tokens[0] = root (last committed)
        q = None if self.sampling.greedy else self._draft_probs(proposal)
        on_device = self.fast.on_device
        layout = layout_on_device(parents) if on_device else layout_from_parents(parents)
        past = cache.get_seq_length()
        positions = past + layout.position_offsets.to(tokens.device)
        out = self.base(tokens[None], cache, positions, layout.attn_mask.to(tokens.device),
                        feature_layers=self.proposer.feature_layers, logits="none")
        if on_device and self.sampling.greedy:
            path, path_ids, new, new_ids = self._accept_on_device(tokens, layout, out.hidden[0])
        else:
            path, path_ids, new, new_ids = self._accept_on_host(tokens, parents, out.hidden[0], q)
        cache.keep(past, path, path_ids == list(range(len(path_ids))))  # contiguity known on the host already
        self.proposer.update(new, None if out.features is None else out.features[0, path])
        result.accept_lengths.append(len(path_ids))
        return new_ids

    def _accept_on_device(self, tokens: torch.Tensor, layout, hidden: torch.Tensor):
        """Greedy acceptance on the device: the LM head over all N rows, then the step's one host
        read (outcome and tree). -> (path [tau] on the device, its node ids, new tokens [tau] on the
        device, their ids)."""
        argmax = self.base.head(hidden).argmax(-1)  # [N]
        order, tau, bonus = greedy_accept_on_device(tokens, layout.parents, layout.attn_mask, layout.depth, argmax)
        n = tokens.shape[0]
        host = torch.cat([tau[None], bonus[None], layout.parents, order, tokens[order]]).tolist()
        tau = host[0]
        check_parent_list(host[2: 2 + n])  # the proposer's tree, checked on the host after the fact
        path = order[:tau]
        new = torch.cat([tokens[path[1:]], bonus[None]])
        return path, host[2 + n: 2 + n + tau], new, host[2 + 2 * n + 1: 2 + 2 * n + tau] + [host[1]]

    def _draft_probs(self, proposal) -> torch.Tensor | None:
        """The proposal's q [N, V_base] where the base's vocabulary is V_base, on the tokens' device; None
        when the proposal has none (its tokens are deterministic candidates)."""
        q = proposal.draft_probs
        if q is None:
            return None
        want = (proposal.size, self.base.vocab_size)
        if tuple(q.shape) != want:
            raise ValueError(f"Proposal.draft_probs must have shape [N, V_base] = {list(want)} (one row per tree node, "
                             f"over the base vocabulary), got {list(q.shape)}")
        return q.to(proposal.tokens.device)

    def _accept_on_host(self, tokens: torch.Tensor, parents: torch.Tensor, hidden: torch.Tensor,
                        draft_probs: torch.Tensor | None = None):
        """Acceptance walked on the host (CPU strategy, and sampling) by the verification strategy the fast
        paths picked (inference/verify.py): same return as `_accept_on_device`. Sampling with `draft_probs`
        (q [N, V]) takes SpecInfer's rule with q instead of the deterministic-candidate one."""
        if self.sampling.greedy:
            path, bonus = self.verifier.greedy(self.base.head, tokens, parents, hidden)
        else:
            path, bonus = self.verifier.sample(self.base.head, self._probs, tokens, parents, hidden, self.generator,
                                               draft_probs=draft_probs)
        path = path.to(tokens.device)
        new = torch.cat([tokens[path[1:]], torch.tensor([bonus], device=tokens.device)])
        return path, path.tolist(), new, new.tolist()
