"""``meanavg`` (paper §4.1, MeanAvg): the mean of the present experts' projections.

Level: expert features, one stage over every expert of every modality (no per-modality step).
Each expert is projected to ``hidden_dim`` by its own linear map; the fused vector is the mean
over the **present** experts only (absent experts are left out of both the sum and the count, so
an absent modality simply contributes no expert); a sample with nothing present gets the zero
vector, i.e. the head's bias. Then the shared GELU-Dropout-Linear head.

Trained by the same :class:`~medmix.training.trainer.EnsembleTrainer` as MedMIX (same schedule,
early stopping and reproducibility) at the ``training`` section's ``lr``, like every neural
method (the former ``baseline_lr`` is refused with a message; see
:mod:`medmix.methods.simple_fusion` for the shared parts).
"""

from __future__ import annotations

import torch

from medmix.methods import register_method
from medmix.methods.simple_fusion import FusionNet, SimpleFusion


class MeanFusionNet(FusionNet):
    def pool(self, z: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        count = present.float().sum(dim=1, keepdim=True)
        # Summed expert by expert (the order of the original MeanAvg: same numbers, same checkpoints).
        return sum(z, 0.0) / count.clamp_min(1.0)


@register_method("meanavg")
class MeanAvg(SimpleFusion):
    net_class = MeanFusionNet
