"""Fused projections for CPU decoding: a layer's q/k/v as one linear, its MLP's gate/up as another.

A decoding step on a CPU is mostly weight reads: every projection of every layer on 1-16 rows. Seven
small calls per layer cost more than four larger ones: each call has its fixed cost, and a larger
weight streams closer to the memory bandwidth. Measured on a 2-core AMD EPYC without AVX-512, torch
2.13, SmolLM2-135M's 30 layers on the few-row kernels (ms per pass of all layers, weights streamed from
memory; `python -m specforge_het.bench.linears`, docs/results/linears_smollm2_fused_noavx512.json):

    rows                  1     8    16
    7 projections       28.0  36.5  47.5
    4 (q/k/v, gate/up)  21.9  30.9  42.8

Whole decoding steps with the shipped SmolLM2 draft, fused against not, back to back per prompt
(runs/s27/fused_ab.py, 8 held-out prompts): base-only 1.07x, a depth-2 tree 1.12x, a depth-5 tree
1.09x tokens/s (medians), outputs identical.

`fused_projections(*roots)` makes, for every attention and MLP of a lean family (models/lean.py
LEAN_LAYERS: Llama, Qwen3, Gemma3) under `roots` on the CPU in float32, one `nn.Linear` over the
concatenated weights (q, k, v rows; gate, up rows), and makes them active for the block:
`models/lean.py` `layer_forward` then calls the fused linear and splits its output. Outside the block
(training, data generation, HF's own forward, the bench's HF peers) nothing changes: the layers' own
modules are untouched, and the fused linears are not part of any module tree or state dict.

The fused linears are ordinary `nn.Linear`s, so the few-row kernels (models/linears.py) route them like
any other and time their shapes. They are cached beside the modules they fuse across blocks (a
decoder enters the block once per generation) and made again when a source weight changed in place,
moved, or an optimizer stepped (`linears.weight_key`; writes through `.data` need `release_fused()`).
Memory: one more copy of the q/k/v and gate/up weights (~65 % of a layer's weights) while cached, for
as long as the model lives; the originals then need no packed copies of their own. Under autograd the
separate projections run (the copies have no gradient). Results agree with the separate projections
to float rounding, not bit for bit, as the few-row kernels do (the tests check that fusing changes no
token and no accept length of a speculative decode, and greedy speculative == base-only).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn
from transformers.models.gemma3 import modeling_gemma3 as g3
from transformers.models.llama import modeling_llama as ll
from transformers.models.qwen3 import modeling_qwen3 as q3

from specforge_het.models.linears import weight_key

ATTENTIONS = (ll.LlamaAttention, q3.Qwen3Attention, g3.Gemma3Attention)
MLPS = (ll.LlamaMLP, q3.Qwen3MLP, g3.Gemma3MLP)
PARTS = {"attention": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}
ENABLED = True  # the decoder's fast paths fuse; a diagnostic switch for A/B runs (runs/, bench)

# source module (attention / MLP) -> (source weight key, fused linear, output sizes); kept across blocks
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# source module -> (fused linear, output sizes), only inside a `fused_projections` block
_ACTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fusable(module: nn.Module) -> tuple[str, ...]:
    """The names of the projections to fuse in `module` (an attention or MLP of a lean family whose
    projections are plain nn.Linear on the CPU in float32 with one input width and bias all or none);
    () when it is none of those."""
    kind = "attention" if type(module) in ATTENTIONS else "mlp" if type(module) in MLPS else None
    if kind is None:
        return ()
    found = [getattr(module, name, None) for name in PARTS[kind]]
    parts: list[nn.Linear] = [p for p in found if type(p) is nn.Linear]
    if len(parts) != len(found):
        return ()
    ok = (len({p.in_features for p in parts}) == 1 and len({p.bias is None for p in parts}) == 1
          and all(p.weight.device.type == "cpu" and p.weight.dtype == torch.float32 for p in parts))
    return PARTS[kind] if ok else ()


def _key(parts: list[nn.Linear]) -> tuple:
    return tuple(weight_key(t) for p in parts for t in (p.weight, p.bias) if t is not None)


def fuse(parts: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear whose output is the concatenation of `parts`' outputs (weights copied, no grad). Made
    outside inference mode, so that a fused linear made under `torch.inference_mode()` is usable after it."""
    with torch.inference_mode(False), torch.no_grad():
        weight = torch.cat([p.weight.detach() for p in parts])
        bias = torch.cat([p.bias.detach() for p in parts]) if parts[0].bias is not None else None
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=False)  # a new tensor, and outside inference mode
        if bias is not None:
            fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def _fused_of(module: nn.Module, names: tuple[str, ...]) -> tuple[nn.Linear, list[int]]:
    """`module`'s fused linear and output sizes, from the cache unless a source weight changed."""
    parts = [getattr(module, name) for name in names]
    key = _key(parts)
    cached = _CACHE.get(module)
    if cached is None or cached[0] != key:
        cached = _CACHE[module] = (key, fuse(parts), [p.out_features for p in parts])
    return cached[1], cached[2]


def release_fused() -> int:
    """Drop every cached fused linear (made again on the next block); returns how many there were."""
    n = len(_CACHE)
    _CACHE.clear()
    return n


@contextlib.contextmanager
def fused_projections(*roots: nn.Module | None):
    """Fused q/k/v and gate/up linears for every fusable module under `roots`, active for the block.

    Yields (fused linears, the source projections they replace): the caller routes the first through
    the few-row kernels and need not pack the second. Nested blocks are harmless (an inner one
    activates nothing new); on exit the outermost block deactivates what it activated."""
    made: list[nn.Module] = []
    fused: list[nn.Linear] = []
    replaced: list[nn.Linear] = []
    try:
        for root in roots if ENABLED else ():
            for module in () if root is None else root.modules():
                names = fusable(module)
                if not names or module in _ACTIVE:
                    continue
                linear, sizes = _fused_of(module, names)
                _ACTIVE[module] = (linear, sizes)
                made.append(module)
                fused.append(linear)
                replaced += [getattr(module, name) for name in names]
        yield fused, replaced
    finally:
        for module in made:
            _ACTIVE.pop(module, None)


def is_fused(module: nn.Module) -> bool:
    """True while `module` (an attention or MLP) runs through its fused linear."""
    return module in _ACTIVE


def qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v projections of x [..., in]: one fused call inside a block, the three modules outside (and
    under autograd: the fused copy has no gradient)."""
    active = _ACTIVE.get(attn)
    if active is None or torch.is_grad_enabled():
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    q, k, v = active[0](x).split(active[1], dim=-1)
    return q, k, v


def mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP on x as HF computes it, down(act(gate(x)) * up(x)), gate and up in one call inside a block
    (not under autograd)."""
    active = _ACTIVE.get(module)
    if active is None or torch.is_grad_enabled():
        return module(x)
    gate, up = active[0](x).split(active[1], dim=-1)
    return module.down_proj(module.act_fn(gate) * up)
