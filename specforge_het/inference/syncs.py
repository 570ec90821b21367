"""Counting host-device synchronisations of the decoder, per decoding step.

A host sync is a point where Python waits for the device: reading a tensor's value on the host.
On a GPU every one of them drains the queue of launched kernels, so a decoding step that reads
values often runs at the speed of its launch latency. Two counters:

* Python-level reads, on any device (CPU included, where they cost nothing but show where a GPU
  would wait): calls of `Tensor.item`, `Tensor.tolist`, `Tensor.cpu`, `Tensor.numpy`, and
  `int(t)`, `float(t)`, `bool(t)`, `t.__index__()` on a tensor. Counted by wrapping those
  methods of `torch.Tensor` for the duration of a `count_host_syncs()` block.
* On CUDA, every synchronising CUDA operation (device-to-host copies, host-to-device copies from
  pageable memory, stream syncs, `nonzero`, ...), as torch's sync debug mode reports it.

`step_syncs(decoder, input_ids, max_new_tokens)` runs one generation and returns the counts of each
decode step (the prompt's prefill excluded): what a self-check (`doctor`) reports as syncs per step.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

# torch.Tensor attributes whose call reads a value on the host
READS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")
_CUDA_SYNC = "synchronizing CUDA operation"  # torch's sync debug mode warning


@dataclass
class SyncCounter:
    """Counts by kind: Python-level reads (`READS`) and, on CUDA, synchronising CUDA operations."""

    reads: Counter = field(default_factory=Counter)
    cuda: int | None = None  # None: not counted (no CUDA device in use)

    @property
    def total_reads(self) -> int:
        return sum(self.reads.values())


@contextlib.contextmanager
def count_host_syncs(cuda: bool = False) -> Iterator[SyncCounter]:
    """Count host reads of tensors inside the block (and, with `cuda`, synchronising CUDA operations)."""
    counter = SyncCounter(cuda=0 if cuda else None)
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name, fn):
        def wrapper(self, *args, **kwargs):
            counter.reads[name] += 1
            return fn(self, *args, **kwargs)

        return wrapper

    with contextlib.ExitStack() as stack:
        if cuda:
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            stack.callback(torch.cuda.set_sync_debug_mode, previous)
        for name, fn in originals.items():
            setattr(torch.Tensor, name, counting(name, fn))
        try:
            yield counter
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)
            if cuda:
                counter.cuda = sum(_CUDA_SYNC in str(w.message) for w in caught)


@dataclass
class StepSyncs:
    """Host syncs of each decode step of one generation (prefill excluded)."""

    reads: list[int]  # Python-level reads per step
    cuda: list[int] | None  # synchronising CUDA operations per step (None off CUDA)
    by_kind: dict[str, int]  # reads over all steps, by kind

    @property
    def steps(self) -> int:
        return len(self.reads)

    @property
    def max_per_step(self) -> int:
        """The most syncs any step made: CUDA's count on CUDA, else the Python-level reads."""
        per_step = self.cuda if self.cuda is not None else self.reads
        return max(per_step, default=0)

    def to_json(self) -> dict:
        return {"steps": self.steps, "reads_per_step": self.reads, "cuda_syncs_per_step": self.cuda,
                "max_per_step": self.max_per_step, "reads_by_kind": self.by_kind}


def step_syncs(decoder, input_ids: torch.Tensor, max_new_tokens: int) -> StepSyncs:
    """Generate once with `decoder` and count the host syncs of every decode step.

    The step method is wrapped on this instance for the call only (removed afterwards).
    """
    name = "_base_step" if decoder.proposer is None else "_spec_step"
    step = getattr(decoder, name)
    cuda = decoder.base.device.type == "cuda"
    reads: list[int] = []
    syncs: list[int] = []
    kinds: Counter = Counter()

    def counted(*args):
        with count_host_syncs(cuda) as c:
            out = step(*args)
        reads.append(c.total_reads)
        kinds.update(c.reads)
        if c.cuda is not None:
            syncs.append(c.cuda)
        return out

    setattr(decoder, name, counted)
    try:
        decoder.generate(input_ids, max_new_tokens)
    finally:
        delattr(decoder, name)
    return StepSyncs(reads, syncs if cuda else None, dict(kinds))
