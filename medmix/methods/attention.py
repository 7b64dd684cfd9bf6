"""``attention`` (paper §4.1, Attention): attention pooling of the present experts' projections.

Level: expert features, one stage over every expert of every modality. Each expert is projected
to ``hidden_dim``; a learned query ``q`` scores each projection, ``s_k = q·z_k / √hidden_dim``;
the weights are a softmax over the **present** experts only (absent experts get weight exactly 0
and the weights re-normalise over what is present); the fused vector is ``Σ_k w_k z_k``; a sample
with nothing present gets the zero vector (the head's bias). Then the shared GELU-Dropout-Linear
head. The weights are per sample (they depend on the projections), not per expert constants; the
predictions carry them as columns ``attention:<modality>:<expert>``.
"""

from __future__ import annotations

import torch
from torch import nn

from medmix.methods import register_method
from medmix.methods.simple_fusion import FusionNet, SimpleFusion, attention_scores, masked_softmax


class AttentionFusionNet(FusionNet):
    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float):
        super().__init__(dims, n_out, hidden, dropout)
        self.query = nn.Parameter(torch.randn(hidden) / hidden**0.5)

    def weights(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return masked_softmax(attention_scores(z, self.query.float()), present)

    def pool(self, z: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(z, dim=1)
        return (self.weights(stacked, present)[:, :, None] * stacked).sum(dim=1)

    def extras(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The attention weights ``[N, K]`` (prediction columns ``attention:<modality>:<expert>``)."""
        present = self.presence(mask)
        return {"attention": self.weights(torch.stack(self.project(x, present), dim=1), present)}


@register_method("attention")
class Attention(SimpleFusion):
    net_class = AttentionFusionNet
