"""EagleV3's training knobs: the config section `eagle_v3.*`."""

from __future__ import annotations

from dataclasses import dataclass

from specforge_het.config import _f


@dataclass
class EagleV3Config:
    ttt_steps: int = _f(7, "EagleV3 training-time-test unroll length k")
    ttt_decay: float = _f(0.8, "EagleV3 per-step loss weight decay")
