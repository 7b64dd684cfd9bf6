"""``concat`` (paper §4.1, Concat): zero-filled concatenation of every expert's projection.

Level: expert features, one stage over every expert of every modality. Each expert is projected
to ``hidden_dim``; the fused vector is the concatenation, in committee order, of all ``K``
projections (an absent expert's slot is exactly zero) followed by the ``K`` presence flags
(0/1), so the head can tell "absent" from "present with a zero projection"; an absent modality
is the zero slots and zero flags of all its experts. Then the shared GELU-Dropout-Linear head
on ``K·hidden_dim + K`` inputs.
"""

from __future__ import annotations

import torch

from medmix.methods import register_method
from medmix.methods.simple_fusion import FusionNet, SimpleFusion


class ConcatFusionNet(FusionNet):
    def pooled_dim(self) -> int:
        return len(self.keys) * (self.hidden + 1)

    def pool(self, z: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return torch.cat([*z, present.float()], dim=1)


@register_method("concat")
class Concat(SimpleFusion):
    net_class = ConcatFusionNet
