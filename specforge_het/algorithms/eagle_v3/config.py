"""EagleV3's training knobs: the config section `eagle_v3.*`."""

from __future__ import annotations

from dataclasses import dataclass

from specforge_het.config import _f


@dataclass
class EagleV3Config:
    ttt_steps: int = _f(7, "EagleV3 training-time-test unroll length k")
    ttt_decay: float = _f(0.8, "EagleV3 per-step loss weight decay")
    reachable_k: int = _f(0, "0 = off; k > 0: unroll step j at a position carries loss only where the draft's top-k held the base's token at every earlier step there (GRIFFIN's token-alignable training: positions a top-k tree can reach)")
