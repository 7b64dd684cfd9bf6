"""``mask_only``: a reference head that sees only which experts are present (the presence pattern).

Input: the ``K`` presence flags (0/1, every expert of every modality in committee order; a
modality is absent when all its flags are 0); no embedding value is ever read. Model: the same
GELU-Dropout-Linear head as the simple fusion rules on one linear layer of the flags (a small
MLP), trained by the same :class:`~medmix.training.trainer.EnsembleTrainer` at the ``training``
section's ``lr``. Missingness is informative in clinical data (a CT is ordered for the frail, a
normal study is documented less): this row tells how much of a score the pattern alone explains.
"""

from __future__ import annotations

import torch
from torch import nn

from medmix.methods import register_method
from medmix.methods.simple_fusion import FusionNet, SimpleFusion


class MaskOnlyNet(FusionNet):
    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float):
        super().__init__(dims, n_out, hidden, dropout)
        # No projection of any embedding: one linear layer of the presence flags instead.
        self.proj = nn.ModuleList()
        self.flags = nn.Linear(len(self.keys), hidden)

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        present = self.presence(mask)
        return self.head(self.flags(present.to(self.flags.weight.dtype))).float()


@register_method("mask_only")
class MaskOnly(SimpleFusion):
    net_class = MaskOnlyNet
