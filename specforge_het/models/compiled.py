"""Compiled decoder layers for CPU decoding (`--inference.fast_paths compile`): a base's, or an EAGLE
draft's, whole layer stack as one inductor graph.

On a CPU a decoding step is mostly weight reads by 1-16-row products. torch's eager kernels (MKL,
oneDNN; models/linears.py picks the fastest per shape) stream the weights well below the memory
bandwidth on some hosts; inductor's C++ GEMM template, on weights frozen into its own blocked layout
(`freezing`, `max_autotune`), reads them near it. Measured on a 2-core AMD EPYC without AVX-512, torch
2.13, 30 copies of a [3072, 576] weight (runs/s28/cppgemm_probe.py): 1 row 15.2 ms with our few-row
kernels, 6.6 ms compiled; 6 rows 22.2 vs 11.2 ms. Whole base-only decoding of SmolLM2-135M there:
23.1 tok/s under `auto` against 48.6 compiled, the same tokens (runs/s28/compile_ab.py).

`compiled_layers(*owners)` makes each owner's layer stack (`LayerStack`: every layer through
`lean.layer_forward`, its projections as copies of its own, q/k/v and gate/up each as one linear) one
compiled graph for the block; `BaseModel._lean_forward` and `DraftModel.forward` route a call there when
`applies(layers, rows, past)`: inside the block, no grad, at most `MAX_ROWS` new tokens after at least
`FIRST_PAST` cached ones (prefills run the eager lean forward). The graph writes the KV cache's buffers in
place (capacity reserved before the call) and returns every layer's output, so feature taps need no graph
of their own. Rows and cache length are dynamic, so a stack has two graphs (one new token; several), both
compiled when the block is first entered (`_warm`): 2-4 min per process on that host. A compile that
fails warns, and the stack runs on the eager paths.

Frozen weights are copies: while a compiled stack is kept (on its layers, so it goes with them), up to two
more copies of the layer weights live (the stack's fused projections and inductor's packed constants). A
weight changed in place, or an optimizer step, builds and compiles it again (`linears.weight_key`).
Results agree with the eager path to float rounding, not bit for bit, as the few-row kernels do; greedy
speculative decoding equals base-only decoding under the same strategy (tests/test_compiled.py).
Where it applies: lean families on one CPU in float32 (`compilable`).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref

import torch
from torch import nn
from torch.fx.experimental import _config as fx_config

from specforge_het.models.cache import KVCache
from specforge_het.models.fused import fusable, fuse
from specforge_het.models.lean import layer_forward
from specforge_het.models.linears import weight_key

MAX_ROWS = 64  # calls of more new tokens (long prefills) run the eager lean forward
OPTIONS = {"freezing": True,  # frozen weights: what the C++ GEMM template packs
           "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
FIRST_PAST = 2  # calls after fewer cached entries (prefills) run eagerly
RECOMPILE_LIMIT = 64  # graphs per code object while a stack is called (one per base or draft, two graphs each)
# After the warm-up a call checks only the guards that tell a stack's two graphs apart (torch's
# skip_guard_eval_unsafe): the full check cost ~0.4 ms a call here; skipping it gave 1.03-1.05x tok/s, the same
# tokens (runs/s29/guard_ab.py 6 96: base-only, depth-1 and depth-5 trees). Safe as used: the inputs of a call are
# made by `run` exactly as the warm-up's are, a weight change is caught by `weight_key`, and tests/test_compiled.py
# checks every path against the eager forward (and fails on any call neither graph fits: in use, `_on_miss`
# compiles one, as calls did before).
SKIP_GUARDS = True

# A stack's layers (nn.ModuleList) keep (weight key, LayerStack, compiled callable) as the attribute _ATTR, so
# that the compiled stack lives exactly as long as they do; _BUILT finds them for `release_compiled`.
_ATTR = "_specforge_compiled_stack"
_BUILT: weakref.WeakSet = weakref.WeakSet()
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layers -> (compiled callable, K/V shapes), in a block


class Projections(nn.Module):
    """One layer's projections as linears of its own (copies): q/k/v as one, o, gate/up as one, down."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv_proj = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.sizes = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
        self.o_proj = fuse([attn.o_proj])
        self.gate_up = fuse([mlp.gate_proj, mlp.up_proj])
        self.inner = mlp.gate_proj.out_features
        self.down_proj = fuse([mlp.down_proj])
        self.act_fn = mlp.act_fn

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        return q, k, v

    def o(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(x)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split([self.inner, self.inner], dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class _Writer:
    """The KV cache as the graph sees it: layer i's new K/V written into its buffer at `past`, in place."""

    def __init__(self, ks: list[torch.Tensor], vs: list[torch.Tensor], past: int):
        self.ks, self.vs, self.past = ks, vs, past

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.past + k.shape[2]
        self.ks[i][:, :, self.past:end] = k
        self.vs[i][:, :, self.past:end] = v
        return self.ks[i][:, :, :end], self.vs[i][:, :, :end]


class LayerStack(nn.Module):
    """Every layer of a stack through `lean.layer_forward` with its `Projections`; returns each layer's output.
    A first layer that reads the token embeddings too (EAGLE-3's `FusedFirstLayer`) gets them as `embeds`."""

    def __init__(self, layers: nn.ModuleList, kinds: list[str]):
        super().__init__()
        self.layers = layers
        self.proj = nn.ModuleList(Projections(layer) for layer in layers)
        self.kinds = tuple(kinds)
        self.takes_embeds = tuple(bool(getattr(layer, "takes_embeds", False)) for layer in layers)

    def forward(self, h: torch.Tensor, embeds: torch.Tensor | None, ropes: dict, masks: dict,
                ks: list[torch.Tensor], vs: list[torch.Tensor], past: int) -> list[torch.Tensor]:
        writer, outs = _Writer(ks, vs, past), []
        for i, (layer, proj) in enumerate(zip(self.layers, self.proj)):
            kind = self.kinds[i]
            normed = layer.input_layernorm(embeds, h) if self.takes_embeds[i] else None
            cos, sin = ropes[kind]
            h = layer_forward(layer, h, cos, sin, masks[kind], writer, i, proj, normed)  # type: ignore[arg-type]
            outs.append(h)
        return outs


def _is_lean(owner) -> bool:
    lean = owner.lean
    return bool(lean() if callable(lean) else lean)


def compilable(owner) -> bool:
    """True for a base or draft the compiled stack supports: the lean forward (a lean family on one device),
    every weight of its layers on the CPU in float32, every attention and MLP with plain projections."""
    params = list(owner.layers.parameters())
    if not params or not _is_lean(owner):
        return False
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return False
    return all(fusable(layer.self_attn) and fusable(layer.mlp) and type(layer.self_attn.o_proj) is nn.Linear
               and type(layer.mlp.down_proj) is nn.Linear for layer in owner.layers)


def layer_kinds(owner) -> list[str]:
    """Each layer's attention kind: a base's `layer_types`; a draft's layers all attend fully."""
    return list(getattr(owner, "layer_types", None) or ["full_attention"] * len(owner.layers))


def _compiled(owner):
    """The owner's compiled stack, from its layers (kept there, so both go together) unless a layer weight
    changed since it was built."""
    layers = owner.layers
    key = tuple(weight_key(p) for p in layers.parameters())
    cached = layers.__dict__.get(_ATTR)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            stack = LayerStack(layers, layer_kinds(owner)).eval()
        graph = torch.compile(stack, dynamic=True)

        def compile_call(*args):  # inductor reads `freezing` outside what torch.compile(options=) patches
            with (torch._inductor.config.patch(OPTIONS), fx_config.patch(use_duck_shape=False),
                  torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)):
                return graph(*args)

        def call(*args):  # once both graphs exist: only the guards that tell them apart (one row or several)
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=SKIP_GUARDS):
                    return graph(*args)
            except RuntimeError as e:  # torch refuses to compile under the guard skip; nothing ran yet
                if "skip_guard_eval_unsafe" not in str(e):
                    raise
                return _on_miss(compile_call, args)
        _warm(owner, compile_call)
        cached = (key, stack, call)
        object.__setattr__(layers, _ATTR, cached)  # a plain attribute: not a submodule, not in any state dict
        _BUILT.add(layers)
    return cached[2]


def _on_miss(compile_call, args):
    """A call that neither graph fits (none should: tests/test_compiled.py makes this fail): compile a graph for it
    with the warm-up's options and full guards, as any call did before the guard skip."""
    return compile_call(*args)


def _warm(owner, call) -> None:
    """Compile both graphs now (one new token; several), on a scratch cache, so that no decoding step pays it.
    The inputs are shaped as a step's are: contiguous, one tensor per input (no input shared between two
    arguments or two attention kinds: torch would guard on that), sizes unlike any other (past 3, capacity 67)."""
    for rows in (1, 2):
        with torch.no_grad():
            call(*warm_args(owner, rows))


def warm_args(owner, rows: int) -> tuple:
    """A compiled stack's arguments for `rows` new tokens after 3 cached ones, on a scratch cache (capacity 67)."""
    layers = owner.layers
    width = layers[0].self_attn.o_proj.out_features
    shapes = _kv_shapes(layers)
    head_dim = shapes[0][1]
    takes_embeds = any(getattr(layer, "takes_embeds", False) for layer in layers)
    cache = KVCache(len(layers), 67)
    h = torch.zeros(1, rows, width)
    cache.reserve(3 + rows, like=h, heads_dims=shapes)
    cache.length = 3
    embeds = torch.zeros_like(h) if takes_embeds else None
    kinds = dict.fromkeys(layer_kinds(owner))
    ropes = {k: (torch.ones(1, rows, head_dim), torch.zeros(1, rows, head_dim)) for k in kinds}
    masks = {k: torch.ones(1, 1, rows, 3 + rows, dtype=torch.bool) for k in kinds}
    return h, embeds, ropes, masks, cache.k, cache.v, cache.length


def release_compiled() -> int:
    """Drop every compiled stack still alive (built again in the next block); returns how many there were."""
    n = 0
    for layers in list(_BUILT):
        n += layers.__dict__.pop(_ATTR, None) is not None
    _BUILT.clear()
    return n


@contextlib.contextmanager
def compiled_layers(*owners):
    """For the block, the lean forward of each base or draft in `owners` runs calls of up to MAX_ROWS new
    tokens through its compiled stack (an owner that is not `compilable` is left alone, with a warning; None
    is skipped). Yields the owners it applies to."""
    made = []
    try:
        for owner in owners:
            if owner is None or owner.layers in _ACTIVE:
                continue
            if not compilable(owner):
                warnings.warn(f"--inference.fast_paths compile: {type(owner).__name__}'s layers are not compiled (it "
                              "needs a Llama, Qwen3 or Gemma3 stack with SDPA attention on one CPU in float32); they "
                              "run on the auto paths.", stacklevel=3)
                continue
            try:
                _ACTIVE[owner.layers] = (_compiled(owner), _kv_shapes(owner.layers))
            except Exception as e:  # no C++ compiler, an inductor bug: this generation runs the auto paths
                warnings.warn(f"--inference.fast_paths compile: compiling {type(owner).__name__}'s layers failed "
                              f"({type(e).__name__}: {e}); they run on the auto paths. Check that a C++ compiler "
                              "(gcc or clang) is installed, or use --inference.fast_paths auto.", stacklevel=3)
                continue
            made.append(owner)
        yield made
    finally:
        for owner in made:
            _ACTIVE.pop(owner.layers, None)


def applies(layers: nn.ModuleList, rows: int, past: int) -> bool:
    """True when a call of `rows` new tokens after `past` cached ones runs through the compiled stack: inside
    a block, at most MAX_ROWS rows, and `past` >= FIRST_PAST (torch specialises the sizes 0 and 1: a
    prefill would compile a graph of its own; it runs eagerly); never under autograd (frozen copies)."""
    return layers in _ACTIVE and rows <= MAX_ROWS and past >= FIRST_PAST and not torch.is_grad_enabled()


def active(layers: nn.ModuleList) -> bool:
    return layers in _ACTIVE


def run(layers: nn.ModuleList, h: torch.Tensor, embeds: torch.Tensor | None, ropes: dict, masks: dict,
        cache) -> list[torch.Tensor]:
    """Every layer's output [1, S, H] for h [1, S, H] through the compiled stack of `layers`; the S new K/V
    entries written after `cache.length` (capacity reserved here; the caller advances the cache)."""
    call, shapes = _ACTIVE[layers]
    cache.reserve(cache.length + h.shape[1], like=h, heads_dims=shapes)
    return call(h, embeds, ropes, masks, cache.k, cache.v, cache.length)


def _kv_shapes(layers: nn.ModuleList) -> list[tuple[int, int]]:
    """(K/V heads, head dim) of every layer."""
    return [(layer.self_attn.k_proj.out_features // layer.self_attn.head_dim, layer.self_attn.head_dim)
            for layer in layers]
