"""Few-row linears for CPU decoding: per weight shape and row bucket, the fastest of four kernels.

Decoding calls every nn.Linear on 1 row (a base-only step) or a few (a verify: ~4-16 tree rows;
a draft's tree level). On a CPU, which fp32 kernel is fast for so few rows depends on the host and
the shape, and the spread is large. Measured on a 2-core AMD EPYC (AVX512-BF16, no AMX), torch
2.13, Gemma-3-270M's LM head [262144, 640]:

    rows             1     2     4     8    16
    linear   (ms)   43    88    75    79    91
    swapped  (ms)   14    15    19    40    78
    onednn   (ms)    9     9    11    14    18

* `linear`: F.linear (MKL's few-row path reads the weight ~3x slower than memory allows here).
* `mkl`: MKL's packed GEMM on a weight packed once per MKL row bucket (4-64, rows padded up). On an
  Intel host with AMX, MKL's GEMM for 4-64 rows re-packed the weight on every call, and this won.
* `onednn`: oneDNN's linear on one reordered copy of the weight (any row count).
* `swapped`: the same product as ``mm(W, x^T)^T`` (rows padded up to the bucket, at least 2), a GEMM
  with the weight as its left operand; no copy of the weight.

So nothing is assumed: for each (weight shape, row bucket) the kernels are timed on that shape, best
of a few, each over a pass of copies of the weight that streams them from memory (as a forward
does, where all other weights pass between two calls of one module; a hot-cache timing of one small
weight favours kernels that a real forward runs ~2x slower), and the fastest is kept for the rest of
the process: buckets 1-16 on entering `packed_linears`, larger ones on first use. Another kernel
replaces F.linear only when it takes under `MARGIN` of its time, and a kernel whose output differs
from F.linear beyond float rounding is never chosen. `kernel_choices()` says what was chosen. Results agree with F.linear to float rounding, not bit for bit: the decoder's
greedy output equals base-only decoding's (the tests check it on every tree shape), and a
different kernel can flip a near-tie against a peer that runs F.linear (inference/divergence.py).

Routing is scoped (`packed_linears`): when the block ends every nn.Linear is HF's plain module
again. Packed weight copies (`mkl`: one per MKL bucket, `onednn`: one) of the shapes that chose them
stay cached beside the modules (`release_packed` drops them); a copy made only to be timed is
dropped at once. Memory: at most one extra copy of the weights per packed kind and bucket in use.
"""

from __future__ import annotations

import contextlib
import time
import types
import weakref
from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

PACK_MAX_ROWS = 64  # larger calls (training, data generation, long prefills) keep F.linear
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # a call's rows -> the next bucket up: one kernel choice per bucket
MKL_BUCKETS = (4, 8, 16, 32, 64)  # MKL packs a weight for one row count: rows are padded up to a bucket
PACK_HINT = 16  # oneDNN weight layout tuned for this many rows
KERNELS = ("linear", "mkl", "onednn", "swapped")
PACKED_KERNELS = ("mkl", "onednn")  # the kernels that run on a packed copy of the weight
MARGIN = 0.9  # another kernel replaces F.linear only below this share of its time
TUNE_REPS = 5  # timing rounds per kernel (best of; the first one per kernel, the rest interleaved)
TUNE_BUDGET_S = 0.03  # fewer rounds where a pass of the slowest kernel takes longer than this / TUNE_REPS
EAGER_BUCKETS = (1, 2, 4, 8, 16)  # chosen on entering the scope: a decoding step's row counts; larger ones on first use
EVICT_BYTES = 64 << 20  # a timed pass streams at least this much weight: more than a last-level cache holds
TUNE_COPIES = 64  # ... over up to this many copies of a small weight

assert ROW_BUCKETS[-1] == MKL_BUCKETS[-1] == PACK_MAX_ROWS


def mkl_packing_available() -> bool:
    ops = getattr(torch.ops, "mkl", None)
    return bool(torch.backends.mkl.is_available() and ops is not None
                and hasattr(ops, "_mkl_reorder_linear_weight") and hasattr(ops, "_mkl_linear"))


def onednn_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(torch.backends.mkldnn.is_available() and ops is not None
                and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


def available_kernels() -> tuple[str, ...]:
    """The kernels this torch build has (`linear` and `swapped` always)."""
    have = {"mkl": mkl_packing_available(), "onednn": onednn_available()}
    return tuple(k for k in KERNELS if have.get(k, True))


_AVAILABLE = available_kernels()
_BUCKET = [-1] + [next(b for b in ROW_BUCKETS if b >= r) for r in range(1, PACK_MAX_ROWS + 1)]


def bucket_rows(rows: int) -> int:
    """The row bucket of a call on `rows` rows (its kernel choice; rows are padded up to it where a
    kernel pads); -1: beyond the few-row path (F.linear)."""
    return _BUCKET[rows] if 0 < rows <= PACK_MAX_ROWS else -1


def pack_bucket(kernel: str, bucket: int) -> int:
    """The packed copy a packed kernel runs a row bucket on: `mkl`, the next MKL bucket up; `onednn`, its
    one reorder (0)."""
    return next(b for b in MKL_BUCKETS if b >= bucket) if kernel == "mkl" else 0


# ---------------------------------------------------------------- the kernels


def swapped_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pad_to: int) -> torch.Tensor:
    """x [R, in] @ w^T as ``mm(w, x^T)^T``, rows padded up to `pad_to` (at least 2): [R, out], contiguous."""
    rows = x.shape[0]
    pad = max(pad_to, 2) - rows
    out = torch.mm(w, (F.pad(x, (0, 0, 0, pad)) if pad > 0 else x).t()).t()[:rows]
    return (out + bias if bias is not None else out).contiguous()


def _agrees(got: torch.Tensor, want: torch.Tensor) -> bool:
    return torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-6)


def _pack(w: torch.Tensor, bucket: int) -> tuple | None:
    """(kind, packed weight) for one pack bucket: MKL's packed GEMM for `bucket` rows, or for bucket 0 a
    oneDNN reorder; None when that packing is unavailable or does not reproduce F.linear on a probe."""
    if ("mkl" if bucket else "onednn") not in _AVAILABLE:
        return None
    w = w.detach()
    probe = torch.randn(bucket or 3, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype)
    want = F.linear(probe, w)
    try:
        if bucket:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, bucket)
            ok = _agrees(torch.ops.mkl._mkl_linear(probe, packed, w, None, bucket), want)
            return ("mkl", packed) if ok else None
        packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_HINT)
        ok = _agrees(torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], ""), want)
        return ("onednn", packed) if ok else None
    except RuntimeError:
        return None


def _run_packed(x: torch.Tensor, pack: tuple, w: torch.Tensor, bias: torch.Tensor | None, bucket: int) -> torch.Tensor:
    """x [R, in] through a packed copy (MKL: rows padded up to `bucket`)."""
    if pack[0] == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x, pack[1], bias, "none", [], "")
    rows = x.shape[0]
    out = torch.ops.mkl._mkl_linear(F.pad(x, (0, 0, 0, bucket - rows)) if rows < bucket else x, pack[1], w, bias, bucket)
    return out if rows == bucket else out[:rows]


# packed weights live beside the modules, never in them: an unpacked module is exactly HF's again
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # nn.Linear -> (weight key, {pack bucket: pack})
# (out_features, in_features, has bias, row bucket) -> kernel; shared by every module of that shape
_CHOICE: dict[tuple[int, int, bool, int], str] = {}


_OPT_STEPS = [0]  # optimizer steps taken in this process (a fused AdamW step writes without bumping _version)


def _count_step(optimizer, args, kwargs) -> None:
    _OPT_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


def weight_key(t: torch.Tensor) -> tuple[int, int, int]:
    """What says a copy made from weight `t` is still current: its in-place version counter (inference tensors
    have none), its address, and the optimizer steps taken in this process. Writes through `.data` bump
    nothing: call `release_packed()` (and `fused.release_fused()`) after them."""
    return (-1 if t.is_inference() else t._version, t.data_ptr(), _OPT_STEPS[0])


def _packed_copy(module: nn.Linear, bucket: int) -> tuple | None:
    """The module's packed copy for a pack bucket, made on first use; remade when the weight changed in
    place, moved, or an optimizer stepped (`weight_key`)."""
    w = module.weight
    key = weight_key(w)
    state = _PACKED.get(module)
    if state is None or state[0] != key:
        state = _PACKED[module] = (key, {})
    packs: dict[int, tuple | None] = state[1]
    return packs[bucket] if bucket in packs else packs.setdefault(bucket, _pack(w, bucket))


def release_packed() -> int:
    """Drop every cached packed copy (rebuilt on the next packed call); returns how many modules had one."""
    n = len(_PACKED)
    _PACKED.clear()
    return n


def kernel_choices() -> dict[str, str]:
    """What this process chose so far, as ``{"OUTxIN+bias rows≤B": kernel}`` (for run headers and JSON)."""
    return {f"{o}x{i}{'+bias' if b else ''} rows<={r}": k for (o, i, b, r), k in sorted(_CHOICE.items())}


def forget_choices() -> None:
    """Forget every kernel choice (each shape is timed again on its next call)."""
    _CHOICE.clear()


# ---------------------------------------------------------------- choosing


def time_kernels(kernels: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best-of-`TUNE_REPS` seconds of one pass of each kernel (`_kernel_calls`), rounds interleaved
    across kernels."""
    best = {}
    for name, fn in kernels.items():
        fn()  # first use (warms code paths) is not timed
        t = time.perf_counter()
        fn()
        best[name] = time.perf_counter() - t
    slowest = max(best.values(), default=0.0)
    for _ in range(min(TUNE_REPS - 1, int(TUNE_BUDGET_S / max(slowest, 1e-9)))):
        for name, fn in kernels.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def choose(times: dict[str, float]) -> str:
    """The kernel to keep: the fastest, unless it saves less than 1 - MARGIN of F.linear's time."""
    fastest = min(times, key=lambda k: times[k])
    return fastest if times[fastest] < MARGIN * times["linear"] else "linear"


def _kernel_calls(module: nn.Linear, x: torch.Tensor, bucket: int) -> dict[str, list[Callable[[], torch.Tensor]]]:
    """Per available kernel, one call on `x` per copy of the module's weight (the module's own first;
    enough copies to fill `EVICT_BYTES`, at most `TUNE_COPIES`, so that a pass over them streams the
    weights from memory as a forward does)."""
    w, bias = module.weight.detach(), module.bias
    n = max(1, min(TUNE_COPIES, EVICT_BYTES // (w.numel() * w.element_size())))
    weights = [w] + [w.clone() for _ in range(n - 1)]
    calls: dict[str, list[Callable[[], torch.Tensor]]] = {
        "linear": [partial(F.linear, x, wi, bias) for wi in weights],
        "swapped": [partial(swapped_linear, x, wi, bias, bucket) for wi in weights]}
    for k in PACKED_KERNELS:
        pb = pack_bucket(k, bucket)
        first = _packed_copy(module, pb) if k in _AVAILABLE else None
        if first is None:
            continue
        ready = [first] + [p for p in (_pack(wi, pb) for wi in weights[1:]) if p is not None]
        if len(ready) == len(weights):
            calls[k] = [partial(_run_packed, x, p, wi, bias, pb) for p, wi in zip(ready, weights)]
    return calls


def _each(calls: list[Callable[[], torch.Tensor]]) -> None:
    for call in calls:
        call()


def _tune(module: nn.Linear, bucket: int) -> str:
    """Time the kernels on `module`'s shape at `bucket` rows; the choice, kept for every module of that shape."""
    w, bias = module.weight, module.bias
    x = torch.randn(bucket, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype)
    want = F.linear(x, w, bias)
    calls = {k: c for k, c in _kernel_calls(module, x, bucket).items() if k == "linear" or _agrees(c[0](), want)}
    kernel = choose(time_kernels({k: partial(_each, c) for k, c in calls.items()}))
    shape = (w.shape[0], w.shape[1], bias is not None)
    for k in PACKED_KERNELS:  # copies made only to be timed: give the memory back
        pb = pack_bucket(k, bucket)
        used = any(s[:3] == shape and c == k and pack_bucket(k, s[3]) == pb for s, c in _CHOICE.items())
        if k != kernel and not used and module in _PACKED:
            _PACKED[module][1].pop(pb, None)
    return kernel


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward for inference on 1-64 rows: the kernel chosen for this shape and row bucket.
    F.linear for more rows, under autograd, or off the CPU / float32. (Per call, so kept lean.)"""
    w = self.weight
    rows = x.numel() // x.shape[-1]
    if (rows > PACK_MAX_ROWS or rows == 0 or torch.is_grad_enabled() or x.dtype != torch.float32
            or w.dtype != torch.float32 or x.device.type != "cpu"):
        return F.linear(x, w, self.bias)
    bucket = _BUCKET[rows]
    key = (w.shape[0], w.shape[1], self.bias is not None, bucket)
    kernel = _CHOICE.get(key)
    if kernel is None:
        kernel = _CHOICE[key] = _tune(self, bucket)
    if kernel == "linear":
        return F.linear(x, w, self.bias)
    flat = x.reshape(rows, x.shape[-1])
    if kernel == "swapped":
        out = swapped_linear(flat, w, self.bias, bucket)
    else:
        pb = pack_bucket(kernel, bucket)
        pack = _packed_copy(self, pb)
        if pack is None:
            return F.linear(x, w, self.bias)
        out = _run_packed(flat, pack, w, self.bias, pb)
    return out.view(*x.shape[:-1], out.shape[-1])


# ---------------------------------------------------------------- routing, scoped


def is_packed(module: nn.Module) -> bool:
    """True while `module.forward` is routed through the few-row path (an instance-level override)."""
    fwd = module.__dict__.get("forward")
    return getattr(fwd, "__func__", None) is _packed_forward


def pack_linears(root: nn.Module) -> list[nn.Linear]:
    """Route small inference calls of every nn.Linear under `root` through the few-row path (CPU, fp32).

    An instance-level `forward` is set on each; `unpack_linears` removes it again. Calls that need
    gradients, many rows, another device or dtype run F.linear unchanged. Returns the layers routed by
    this call (none that are routed already)."""
    routed = []
    for module in root.modules():
        if type(module) is nn.Linear and "forward" not in module.__dict__:
            module.forward = types.MethodType(_packed_forward, module)
            routed.append(module)
    return routed


def unpack_linears(modules: nn.Module | list[nn.Module]) -> int:
    """Remove the routing from `modules` (a list, or every module under a root): plain nn.Linear again.
    Other instance-level overrides are left alone. Returns the number of modules restored."""
    found = list(modules.modules()) if isinstance(modules, nn.Module) else list(modules)
    n = 0
    for module in found:
        if is_packed(module):
            del module.__dict__["forward"]
            n += 1
    return n


def choose_kernels(modules: list[nn.Linear]) -> int:
    """Choose the kernel of the `EAGER_BUCKETS` for each shape among `modules` that has none yet (CPU,
    float32), and make each module's packed copies for them, so that a decoding step neither times nor
    packs; returns how many choices were timed."""
    n = 0
    with torch.no_grad():
        for m in modules:
            w = m.weight
            if w.dtype != torch.float32 or w.device.type != "cpu":
                continue
            for bucket in EAGER_BUCKETS:
                key = (w.shape[0], w.shape[1], m.bias is not None, bucket)
                if key not in _CHOICE:
                    _CHOICE[key] = _tune(m, bucket)
                    n += 1
                if _CHOICE[key] in PACKED_KERNELS:  # every module's copy now, not in its first decoding step
                    _packed_copy(m, pack_bucket(_CHOICE[key], bucket))
    return n


@contextlib.contextmanager
def packed_linears(*roots: nn.Module | None, lazy: Iterable[nn.Module] = ()):
    """Few-row linears under `roots` for the duration of the block, the kernels of 1-16 rows chosen on
    entry (once per process and shape: seconds for a 100M-parameter model on 2 cores); nested use is harmless
    (the outermost block restores what it routed, an inner one routes nothing new). Modules in `lazy` are
    routed too but chosen for and packed only if called (models/fused.py: the projections a fused
    linear stands in for)."""
    routed: list[nn.Linear] = []
    skip = {id(m) for m in lazy}
    try:
        for root in roots:
            if root is not None:
                routed += pack_linears(root)
        choose_kernels([m for m in routed if id(m) not in skip])
        yield routed
    finally:
        unpack_linears(routed)
