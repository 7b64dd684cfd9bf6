"""``max`` (paper §4.1, Max): element-wise maximum over the present experts' projections.

Level: expert features, one stage over every expert of every modality. Each expert is projected
to ``hidden_dim``; the fused vector is, per coordinate, the maximum over the **present** experts
only (absent experts are set to -inf before the max, so an absent expert never wins, whatever
its projection would be); a sample with nothing present gets the zero vector (the head's bias).
Then the shared GELU-Dropout-Linear head.
"""

from __future__ import annotations

import torch

from medmix.methods import register_method
from medmix.methods.simple_fusion import FusionNet, SimpleFusion


class MaxFusionNet(FusionNet):
    def pool(self, z: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        stacked = torch.where(present[:, :, None], torch.stack(z, dim=1), float("-inf"))
        best = stacked.amax(dim=1)
        return torch.where(present.any(dim=1, keepdim=True), best, 0.0)


@register_method("max")
class Max(SimpleFusion):
    net_class = MaxFusionNet
