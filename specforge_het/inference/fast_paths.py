"""The decoder's CPU fast paths, as named strategies that its caller picks (`--inference.fast_paths`).

* `auto` (the decoder's default): where they apply,
  - few-row linears: every nn.Linear of the base and of the draft (the LM heads included) runs its
    1-64-row calls on the kernel measured fastest for its shape and row bucket on this host: F.linear,
    MKL's packed GEMM, oneDNN on a reordered copy, or the swapped GEMM `mm(W, x^T)^T` (CPU, float32;
    models/linears.py),
  - fused projections: each lean-family layer (Llama, Qwen3, Gemma3; the base's and the draft's) runs
    q/k/v as one linear and gate/up as another (models/fused.py), and
  - the per-row LM head (CPU): verification runs the base LM head only on the tree rows the
    acceptance rule reads (the accepted path, ~τ rows) instead of all N tree rows: the host
    verification strategy `PerRowHead` (inference/verify.py), beside the tensor-only rules it walks.
* `compile` (CPU): `auto`, and the base's whole layer stack runs as one inductor graph on frozen
  weights (models/compiled.py: about 2x the tokens/s of `auto` on a host without AVX-512; compiled
  once per process, ~2-4 min there), and so do the draft's layers (an EAGLE draft: `DraftModel`); LM
  heads, input adapters and anything else on the `auto` paths.
* `off`, and `auto` on an accelerator: the device strategy. Plain modules, one LM head call over all
  tree rows (`AllRows`, inference/verify.py, where acceptance runs on the host: sampling), and the tree
  built, laid out and (greedy) accepted on the device, so that a decoding step reads the device from
  the host once, for its outcome (`on_device`; inference/syncs.py counts).

Both give the same tokens (greedy: identical; the tests check it). Nothing is applied by a
constructor: `Decoder.generate` enters `FastPaths.scope` for the duration of one generation, and
when it returns every module is the plain HF / PyTorch module again. So training, data generation
and the bench's HF peers, which never enter the scope, run on unmodified modules, even in the
same process and on the same loaded model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from specforge_het.inference.verify import AllRows, PerRowHead, Verifier
from specforge_het.models.compiled import compiled_layers
from specforge_het.models.draft import DraftModel
from specforge_het.models.fused import fused_projections
from specforge_het.models.linears import packed_linears

FAST_PATHS = ("auto", "compile", "off")


@dataclass(frozen=True)
class FastPaths:
    mode: str  # auto | compile | off
    packed: bool  # few-row CPU linears (models/linears.py), entered per generation
    per_row_head: bool  # LM head only on the tree rows the acceptance rule reads (host-driven, CPU)
    compiled: bool = False  # the base's and the draft's layer stacks as compiled graphs (models/compiled.py; CPU)

    @classmethod
    def resolve(cls, mode: str, device: torch.device) -> FastPaths:
        """`auto`: on a CPU, few-row linears and the per-row head; elsewhere the device
        strategy. `compile`: `auto`, and on a CPU the base's layers compiled. `off`: the device strategy
        (plain modules, head over all rows), on any device."""
        if mode not in FAST_PATHS:
            raise ValueError(f"fast_paths must be one of {', '.join(FAST_PATHS)}, got '{mode}'")
        cpu_auto = mode != "off" and torch.device(device).type == "cpu"
        return cls(mode, cpu_auto, cpu_auto, cpu_auto and mode == "compile")

    @property
    def on_device(self) -> bool:
        """The device strategy: tree building, layout and greedy acceptance without host reads."""
        return not self.per_row_head

    def verifier(self) -> Verifier:
        """A new host verification strategy for one decoder (it keeps statistics across its steps)."""
        return PerRowHead() if self.per_row_head else AllRows()

    def describe(self) -> str:
        """One line for run headers and JSON: the mode and what it switched on here."""
        device = "LM head over all tree rows, tree and greedy acceptance on the device"
        if self.mode == "off":
            return f"off (plain modules, {device})"
        if self.on_device:
            return f"auto (accelerator: plain modules, {device})"
        layers = "layers compiled (one graph per base or draft), " if self.compiled else ""
        return (f"{self.mode} ({layers}few-row CPU linears, kernel measured per shape; fused q/k/v and gate/up; "
                "per-row LM head)")

    def to_json(self) -> dict:
        return {"mode": self.mode, "packed_linears": self.packed, "per_row_head": self.per_row_head,
                "compiled_layers": self.compiled, "on_device": self.on_device, "describe": self.describe()}

    @contextlib.contextmanager
    def scope(self, base, *modules: nn.Module | None):
        """Apply the module-level fast paths to `base` (a BaseModel, or None) and `modules` for the block;
        restore plain modules after. With the base's layers compiled, the rest apply to its LM head only."""
        if not self.packed:
            yield
            return
        owners = (base, *(m for m in modules if isinstance(m, DraftModel))) if self.compiled else ()
        with compiled_layers(*owners) as done:
            roots = [m for owner in ((base.model,) if base is not None else ()) + modules
                     for m in _outside_compiled(owner, base, done)]
            with fused_projections(*roots) as (fused, replaced), packed_linears(*roots, *fused, lazy=replaced):
                yield


def _outside_compiled(root: nn.Module, base, compiled: list) -> list[nn.Module]:
    """What the other fast paths apply to under `root`: all of it, or, where its layers run compiled, the rest
    (a base's LM head; a draft's input adapters, embeddings and head)."""
    if base is not None and root is base.model and base in compiled:
        return [base.lm_head]
    if root in compiled:
        return [child for name, child in root.named_children() if name != "layers"]
    return [root]


def proposer_modules(proposer) -> tuple[nn.Module, ...]:
    """The modules a proposer runs (its optional `fast_path_modules()` hook, inference/protocol.py), for
    the decoder's fast-path scope; () without the hook."""
    get = getattr(proposer, "fast_path_modules", None)
    return tuple(get()) if get is not None else ()


def tell_proposer(proposer, fast: FastPaths) -> None:
    """Hand the decoder's strategy to a proposer that takes one (its optional `use_fast_paths(fast)` hook)."""
    use = getattr(proposer, "use_fast_paths", None)
    if use is not None:
        use(fast)

