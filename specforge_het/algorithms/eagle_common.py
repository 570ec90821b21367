"""What EAGLE-style drafts share: a width adapter `fc` from what the draft reads to the draft width."""

from __future__ import annotations

from specforge_het.models.draft import DraftModel
from specforge_het.models.parts import width_adapter


class EagleDraft(DraftModel):
    """A DraftModel with `fc` (features [+ token embedding] -> draft width) in front of its layers."""

    fc_bias = False

    def fc_in_features(self) -> int:
        raise NotImplementedError

    def add_input_adapters(self) -> None:
        self.fc = width_adapter(self.fc_in_features(), self.cfg.hidden_size, bias=self.fc_bias)
