"""The interface every draft algorithm implements (see eagle_v2.py, eagle_v3.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from specforge_het.models.draft import DraftModel


class DraftAlgorithm:
    name: str = ""
    fc_bias: bool = False
    fused_first_layer: bool = False  # EAGLE-3: layer 0 attends over [embedding, hidden] (2 x width)

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        raise NotImplementedError

    def fc_in_features(self, draft: DraftModel) -> int:
        """Input width of the width adapter `fc`."""
        raise NotImplementedError

    def input_from_base(self, draft: DraftModel, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Draft layer input [B, S, Hd] from the next tokens and base features [B, S, F*Hb]."""
        raise NotImplementedError

    def input_from_self(self, draft: DraftModel, input_ids: torch.Tensor, hidden_out: torch.Tensor) -> torch.Tensor:
        """Draft layer input for a later draft step, from the draft's own previous output [B, S, Hd]."""
        raise NotImplementedError

    def logits(self, draft: DraftModel, hidden_out: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (or the base vocabulary when the draft has no own head)."""
        raise NotImplementedError
