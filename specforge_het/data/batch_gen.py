"""Continuous batching for data generation: many prompts through the base at once.

`BatchGenerator.run` keeps up to `slots` sequences decoding together. Every step feeds one token
per active row; a row that finishes (a stop token, or its token budget) is swapped out at once and
a waiting prompt is prefilled into its slot, so no row idles as padding. The K/V of all rows live
in one buffer per layer [slots, H_kv, length, D]; each row has its own length, and the active rows
are kept at the front (a finished row is replaced by the last active one), so a step works on views,
never on copies of the cache. The buffers grow with the longest row (in steps of
KV_GROW_STEP entries, up to `capacity`), so memory follows the answers, not
`dataset_generation.max_length`; `kv_memory_note` warns at the start when full-length buffers would not fit.

Layers run through HF's own modules (the lean forward of models/lean.py): Llama, Qwen3 and Gemma3
(sliding windows included). `supports_batch_gen` says whether a base qualifies; others use HF
`generate` (data/generate.py).

Determinism: the order of prefills and steps depends only on the requests and their results, so
the same requests give the same tokens (up to the arithmetic of the dtype). Greedy rows take the
arg-max; sampled rows draw from their own `torch.Generator`, so a row's draws do not depend on
which rows share its steps.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from specforge_het.models.lean import _rope, attend_mask, cuda_sdpa_kernels, layer_forward, supports_lean
from specforge_het.models.placement import free_memory


def supports_batch_gen(base) -> bool:
    return supports_lean(base.layers, base.config)


def inverse_cdf(probs: torch.Tensor, order: torch.Tensor | None, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """Token ids [B, 1] drawn from probs [B, K] (sorted descending when top_p < 1; `order` maps columns to
    token ids, None = columns are ids) with uniforms u [B]; top_p keeps the smallest head with mass >= top_p."""
    if top_p < 1:
        probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p, 0.0)
    cdf = probs.cumsum(-1)  # [B, K]
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_max(cdf.shape[-1] - 1)  # [B, 1]
    return pick if order is None else order.gather(1, pick)


def draw(probs: torch.Tensor, u: torch.Tensor, top_p: float = 1.0) -> torch.Tensor:
    """One token [B, 1] per row of probs [B, V] from its uniform u [B] (inverse CDF), top-p optional.

    The nucleus of most rows lies in their top 512 tokens: a top-k is far cheaper than a full sort,
    and rows whose top 512 hold less than top_p fall back to the full sort."""
    if top_p >= 1:
        return inverse_cdf(probs, None, u, 1.0)
    vals, order = probs.topk(min(512, probs.shape[-1]), dim=-1)  # [B, k], sorted
    wide = vals.sum(-1) < top_p
    token = inverse_cdf(vals, order, u, top_p)
    if wide.any():
        vals, order = probs[wide].sort(dim=-1, descending=True)
        token[wide] = inverse_cdf(vals, order, u[wide], top_p)
    return token


@dataclass
class Request:
    """One prompt to continue. `key` is the caller's; `generator` None = greedy."""

    key: object
    prompt: list[int]
    max_new: int
    temperature: float = 0.0
    generator: torch.Generator | None = None
    top_p: float = 1.0


@dataclass
class Result:
    key: object
    tokens: list[int]  # generated ids; ends with the stop token when finish_reason == "stop"
    finish_reason: str  # "stop" | "length"


@dataclass
class _Row:
    req: Request
    tokens: list[int] = field(default_factory=list)


KV_GROW_STEP = 256  # K/V buffers grow in multiples of this many entries per slot


class _SlotKV:
    """K/V buffers per layer [slots, H_kv, allocated, D]; rows are slots, `lens` their valid entries.
    `allocated` grows on demand (`ensure`) up to `capacity`."""

    def __init__(self, num_layers: int, slots: int, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        self.slots, self.kv_heads, self.head_dim, self.dtype, self.device = slots, kv_heads, head_dim, dtype, device
        self.k: list[torch.Tensor] = [torch.zeros(0)] * num_layers
        self.v: list[torch.Tensor] = [torch.zeros(0)] * num_layers
        self.capacity, self.allocated = capacity, 0
        self.ensure(1)

    def nbytes(self, length: int) -> int:
        """Bytes of all K/V buffers at `length` entries per slot."""
        item = torch.empty((), dtype=self.dtype).element_size()
        return 2 * len(self.k) * self.slots * self.kv_heads * length * self.head_dim * item

    def ensure(self, length: int) -> None:
        """Room for `length` entries per slot: grow every buffer to `length` rounded up to a multiple of KV_GROW_STEP
        (at most `capacity`, so at most capacity / KV_GROW_STEP growths a run), keeping what it holds. One layer's
        new buffer exists beside the old ones at a time. (Doubling would overshoot: 768 entries became 1,536 for a
        row of 841.)"""
        if length <= self.allocated:
            return
        if length > self.capacity:
            raise ValueError(f"{length} K/V entries asked of a slot cache of capacity {self.capacity}")
        step = KV_GROW_STEP
        new = min(self.capacity, -(-length // step) * step)
        try:
            for bufs in (self.k, self.v):
                for i, old in enumerate(bufs):
                    grown = torch.zeros((self.slots, self.kv_heads, new, self.head_dim), dtype=self.dtype,
                                        device=self.device)
                    if self.allocated:
                        grown[:, :, : self.allocated] = old
                    bufs[i] = grown
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(
                f"the K/V buffers of {self.slots} slots could not grow to {new} entries ({self.nbytes(new) / 2**30:.1f} "
                "GiB): lower --dataset_generation.batch_size or --dataset_generation.max_length, with a new "
                "output_dir (both are part of a run's identity; merge_datasets joins the parts of both folders)") from e
        self.allocated = new

    def move(self, src: int, dst: int, length: int) -> None:
        for buf in (*self.k, *self.v):
            buf[dst, :, :length] = buf[src, :, :length]


def kv_memory_note(kv: _SlotKV, free: int | None) -> str | None:
    """A warning when the slot cache at full length (every slot at `capacity`) would not fit in `free` bytes."""
    full = kv.nbytes(kv.capacity)
    if free is None or full <= free:
        return None
    return (f"at full length the K/V buffers of {kv.slots} slots x {kv.capacity} entries need {full / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB is free: they grow with the longest row, so the run stops for memory only if its "
            "rows get that long; to be safe, lower --dataset_generation.batch_size or --dataset_generation.max_length")


class _PrefillWriter:
    """What `layer_forward` calls as a cache: stores a right-padded group's K/V into its slots."""

    def __init__(self, kv: _SlotKV, first: int):
        self.kv, self.first = kv, first

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = k.shape[0], k.shape[2]
        self.kv.k[i][self.first: self.first + m, :, :s] = k
        self.kv.v[i][self.first: self.first + m, :, :s] = v
        return k, v


ATTN_ROWS = 16  # rows per attention block: each block of slots reads only as far as its own longest row
ATTN_SAVING = 0.8  # blocks are used only when they read at most this share of the cache one call would


def attention_spans(lens: list[int], rows: int | None = None) -> list[tuple[int, int, int]]:
    """(first, end, width) of each attention call over the slots with cached lengths `lens`.

    Blocks of `rows` slots, each as wide as its longest row plus the new token, so one long row widens
    its own block only; when the blocks would save little (they read > ATTN_SAVING of what one call over
    all rows at the widest width reads), one call over all rows."""
    r = rows or ATTN_ROWS
    blocks = [(a, min(a + r, len(lens)), max(lens[a: a + r]) + 1) for a in range(0, len(lens), r)]
    width = max(w for _, _, w in blocks)
    if sum((b - a) * w for a, b, w in blocks) > ATTN_SAVING * len(lens) * width:
        return [(0, len(lens), width)]
    return blocks


def _decode_layer(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                  kv: _SlotKV, i: int, lens: torch.Tensor, rows: torch.Tensor,
                  spans: list[tuple[int, int, int]]) -> torch.Tensor:
    """One layer for one new token per row. h [n, 1, H]; lens [n] = entries cached before this token;
    mask [n, 1, 1, width] (additive: 0 = attend); `spans` blocks of rows with their widths (attention_spans).
    Query heads are grouped by their K/V head, so grouped-query attention reads the cache without copying it
    per head."""
    attn = layer.self_attn
    n = h.shape[0]
    x = layer.input_layernorm(h)
    d = attn.head_dim
    q = attn.q_proj(x).view(n, 1, -1, d)
    k = attn.k_proj(x).view(n, 1, -1, d)
    v = attn.v_proj(x).view(n, 1, -1, d)
    if hasattr(attn, "q_norm"):  # Qwen3, Gemma3
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = _rope(q.transpose(1, 2), cos, sin)  # [n, H, 1, D]
    k = _rope(k.transpose(1, 2), cos, sin)  # [n, H_kv, 1, D]
    kv.k[i][rows, :, lens] = k[:, :, 0]
    kv.v[i][rows, :, lens] = v[:, 0]
    qg = q.reshape(n, kv.k[i].shape[1], -1, d)  # head j*g + r uses K/V head j (HF's repeat_kv order)
    with cuda_sdpa_kernels(qg.device.type):
        outs = [F.scaled_dot_product_attention(qg[a:b], kv.k[i][a:b, :, :w], kv.v[i][a:b, :, :w],
                                               attn_mask=mask[a:b, ..., :w], scale=attn.scaling) for a, b, w in spans]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    out = attn.o_proj(out.reshape(n, 1, -1))
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma3: sandwich norms
        h = h + layer.post_attention_layernorm(out)
        return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
    h = h + out
    return h + layer.mlp(layer.post_attention_layernorm(h))


class BatchGenerator:
    """Continuous batching over a `BaseModel` whose layers have a lean forward (see module doc)."""

    def __init__(self, base, slots: int, stop_ids: list[int], capacity: int, prefill_tokens: int = 4096):
        if not supports_batch_gen(base):
            raise ValueError(f"{type(base.layers[0]).__name__} has no lean forward; use HF generate for this base")
        self.base, self.slots, self.capacity = base, int(slots), int(capacity)
        self.stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
        self.prefill_tokens = prefill_tokens  # cap on prompt tokens prefilled in one forward
        cfg = base.config
        attn = base.layers[0].self_attn
        self.kv = _SlotKV(base.num_layers, self.slots, cfg.num_key_value_heads, attn.head_dim, self.capacity,
                          base.dtype, base.device)
        self.memory_note = kv_memory_note(self.kv, free_memory(base.device))
        self.attn_rows = ATTN_ROWS  # slots per attention call (attention_spans)
        self.steps = 0
        self.prefills = 0

    # ------------------------------------------------------------ forward pieces
    def _rotary(self, h, pos_ids, kind):
        return self.base._rotary(h, pos_ids, kind)

    def _window(self, kind: str) -> int | None:
        return self.base.sliding_window if kind == "sliding_attention" else None

    @torch.no_grad()
    def _prefill(self, rows: list[_Row], first: int) -> torch.Tensor:
        """Prefill `rows` into slots first.. (right-padded, causal); returns last-token logits [m, V]."""
        base, dev = self.base, self.base.device
        lens = [len(r.req.prompt) for r in rows]
        s = max(lens)
        self.kv.ensure(s)
        ids = torch.zeros(len(rows), s, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : lens[j]] = torch.tensor(r.req.prompt)
        ids = ids.to(dev)
        positions = torch.arange(s, device=dev)
        h = base.body.embed_tokens(ids)
        writer = _PrefillWriter(self.kv, first)
        rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        masks: dict[str, torch.Tensor | None] = {}
        for i, layer in enumerate(base.layers):
            kind = base.layer_types[i]
            if kind not in rope:
                rope[kind] = self._rotary(h, positions[None], kind)
                masks[kind] = attend_mask(positions, 0, None, self._window(kind)) if s > 1 else None
            h = layer_forward(layer, h, *rope[kind], masks[kind], writer, i)  # type: ignore[arg-type]  # duck-typed cache
        last = h[torch.arange(len(rows), device=dev), torch.tensor(lens, device=dev) - 1]  # [m, H]
        self.prefills += 1
        return base.head(base.norm(last)).float()

    @torch.no_grad()
    def _step(self, tokens: torch.Tensor, lens: torch.Tensor, spans: list[tuple[int, int, int]]) -> torch.Tensor:
        """One token for each of the first n slots. tokens [n], lens [n] (cached entries); spans: the attention
        blocks, from the host's list of lengths (`attention_spans`). Logits [n, V]."""
        base, dev = self.base, self.base.device
        width = max(w for _, _, w in spans)
        self.kv.ensure(width)
        key_pos = torch.arange(width, device=dev)
        valid = key_pos[None] <= lens[:, None]  # [n, width]
        rows = torch.arange(lens.shape[0], device=dev)  # row index of every slot, for the K/V writes
        h = base.body.embed_tokens(tokens[:, None])
        pos_ids = lens[:, None]
        rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        masks: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(base.layers):
            kind = base.layer_types[i]
            if kind not in rope:
                rope[kind] = self._rotary(h, pos_ids, kind)
                window = self._window(kind)
                m = valid if window is None else valid & (lens[:, None] - key_pos[None] < window)
                # additive float mask: CPU SDPA runs about twice as fast with it as with a boolean one
                masks[kind] = torch.zeros(m.shape, dtype=h.dtype, device=dev).masked_fill_(
                    ~m, torch.finfo(h.dtype).min)[:, None, None]
            h = _decode_layer(layer, h, *rope[kind], masks[kind], self.kv, i, lens, rows, spans)
        self.steps += 1
        return base.head(base.norm(h[:, 0])).float()

    # ------------------------------------------------------------ choosing tokens
    @staticmethod
    def _choose(logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Arg-max for greedy rows; sampled rows draw one uniform each from their own generator."""
        out = logits.argmax(-1)
        sampled = [j for j, r in enumerate(rows) if r.req.generator is not None and r.req.temperature > 0]
        for top_p in sorted({rows[j].req.top_p for j in sampled}):
            idx = [j for j in sampled if rows[j].req.top_p == top_p]
            temps = torch.tensor([rows[j].req.temperature for j in idx], device=logits.device)
            probs = torch.softmax(logits[idx] / temps[:, None], dim=-1)
            u = torch.stack([torch.rand((), generator=rows[j].req.generator) for j in idx]).to(logits.device)
            out[idx] = draw(probs, u, top_p)[:, 0]
        return out.tolist()

    def _finished(self, row: _Row) -> str | None:
        if row.tokens and row.tokens[-1] in self._stop_set:
            return "stop"
        if len(row.tokens) >= row.req.max_new or len(row.req.prompt) + len(row.tokens) >= self.capacity:
            return "length"
        return None

    # ------------------------------------------------------------ the loop
    def run(self, requests: list[Request], on_done: Callable[[Result], list[Request]]) -> None:
        """Generate every request; `on_done(result)` may return follow-up requests (a next turn).

        Waiting requests are kept sorted by prompt length (stable), so a prefill groups similar lengths.
        """
        self._stop_set = set(self.stop.tolist())
        for r in requests:
            self._check(r)
        pending: list[tuple[int, int, Request]] = []  # (length, arrival, request)
        arrival = itertools.count()

        def wait(r: Request) -> None:
            bisect.insort(pending, (len(r.prompt), next(arrival), r), key=lambda t: (t[0], t[1]))

        for r in requests:
            wait(r)
        active: list[_Row] = []
        lens: list[int] = []
        refill_at = max(1, self.slots // 8)
        while pending or active:
            free = self.slots - len(active)
            if pending and (free >= refill_at or not active):
                rows = self._admit(self._take(pending, free), len(active))
                active += rows
                lens += [len(r.req.prompt) for r in rows]
            else:
                self._decode(active, lens)
            self._retire(active, lens, on_done, wait)

    def _admit(self, group: list, first: int) -> list[_Row]:
        """Prefill the waiting requests of `group` into the slots from `first` on; each gets its first token."""
        rows = [_Row(req) for _, _, req in group]
        logits = self._prefill(rows, first)
        for row, tok in zip(rows, self._choose(logits, rows)):
            row.tokens.append(tok)
        return rows

    def _decode(self, active: list[_Row], lens: list[int]) -> None:
        """One step of every active row: a token each, every length one longer (in place)."""
        dev = self.base.device
        toks = torch.tensor([r.tokens[-1] for r in active], device=dev)
        lt = torch.tensor(lens, device=dev)
        logits = self._step(toks, lt, attention_spans(lens, self.attn_rows))  # from the host list: no device sync
        for row, tok in zip(active, self._choose(logits, active)):
            row.tokens.append(tok)
        lens[:] = [n + 1 for n in lens]

    def _retire(self, active: list[_Row], lens: list[int], on_done: Callable[[Result], list[Request]],
                wait: Callable[[Request], None]) -> None:
        """Swap finished rows out (the last active row takes the slot), report them, queue their follow-ups."""
        j = 0
        while j < len(active):
            reason = self._finished(active[j])
            if reason is None:
                j += 1
                continue
            row = active[j]
            last = len(active) - 1
            if j != last:
                self.kv.move(last, j, lens[last])
            active[j], lens[j] = active[last], lens[last]
            active.pop()
            lens.pop()
            for follow in on_done(Result(row.req.key, row.tokens, reason)) or []:
                self._check(follow)
                wait(follow)

    def _check(self, r: Request) -> None:
        if not r.prompt or r.max_new < 1 or len(r.prompt) >= self.capacity:
            raise ValueError(f"request {r.key!r}: prompt of {len(r.prompt)} tokens with max_new {r.max_new} does not "
                             f"fit the cache of {self.capacity} entries")

    def _take(self, pending: list, free: int) -> list:
        """Up to `free` waiting requests, shortest first, within the prefill token budget."""
        group: list = []
        tokens = 0
        while pending and len(group) < free:
            n = pending[0][0]
            if group and (tokens + n) > self.prefill_tokens:
                break
            group.append(pending.pop(0))
            tokens += n
        return group
