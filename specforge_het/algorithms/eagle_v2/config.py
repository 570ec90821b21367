"""EagleV2's training knobs: the config section `eagle_v2.*`."""

from __future__ import annotations

from dataclasses import dataclass

from specforge_het.config import _f


@dataclass
class EagleV2Config:
    vloss_w: float = _f(1.0, "EagleV2 feature regression (SmoothL1) weight")
    ploss_w: float = _f(0.1, "EagleV2 soft cross-entropy weight")
    feature_noise: float = _f(0.2, "EagleV2 uniform feature noise: width w of U(-w/2, w/2) added to input features")
