"""``large_ref_<modality>``: the paper's single-modality large-model reference rows (Table 1's *-Large).

One method per modality that has a teacher (a *family*: ``large_ref_note`` reads the ``note``
teacher, ``large_ref_frontal`` the ``frontal`` one; the modality is the name's suffix, so each is
its own run and its own table row; list them in ``methods`` for the datasets whose committee
declares that modality's teacher; a dataset without it fails the fit job with a message).

Input: that modality's cached teacher embedding alone (``TensorData.teacher[m]``), standardised
with a mean and std fit on the training rows where it is present (stored in the checkpoint;
clipped to ±10 like the experts). Model: the simple fusion rules' network on that one input
(linear projection, GELU-Dropout-Linear head), trained by the same
:class:`~medmix.training.trainer.EnsembleTrainer` at the ``training`` section's ``lr``, on the
training rows where the teacher is present (early stopping on the validation rows where it is).

Absent teacher: a sample whose teacher embedding is absent — or whose modality is absent from
the expert masks, e.g. dropped by a test-time protocol — gets the **training prior**: each
label's prevalence on the training split (class frequencies for multiclass), unknown labels
skipped. Unlike every other method this one reads a teacher at prediction time: it is a
reference for what the large model alone achieves, not a deployable fusion method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from medmix.data import Standardizer, TensorData
from medmix.methods import register_method
from medmix.methods.meanavg import MeanFusionNet
from medmix.methods.simple_fusion import SimpleFusion
from medmix.protocols import Protocol, ProtocolView


class TeacherRefNet(MeanFusionNet):
    """One input (the raw teacher embedding), standardised inside; the prior where it is absent."""

    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float):
        super().__init__(dims, n_out, hidden, dropout)
        (d,) = [d for ds in dims.values() for d in ds]
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.register_buffer("prior", torch.zeros(n_out))

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        present = self.presence(mask)
        (m, _), = self.keys
        raw = torch.where(present, x[m][0].float(), 0.0)
        z = ((raw - self.mean) / self.std).clamp(-Standardizer.CLIP, Standardizer.CLIP)
        out = self.head(self.pool(self.project({m: [z]}, present), present)).float()
        return torch.where(present, out, self.prior.float())


def prior_logits(y: torch.Tensor, task: str) -> torch.Tensor:
    """Logits whose probabilities are the training prevalences (class frequencies for multiclass)."""
    y = y.double()
    if task == "multiclass":
        known = ~torch.isnan(y).any(dim=1)
        freq = (y[known].sum(0) + 1e-3) / (known.sum() + 1e-3 * y.shape[1])
        return freq.log().float()
    known = ~torch.isnan(y)
    prev = (torch.nan_to_num(y) * known).sum(0) / known.sum(0).clamp_min(1)
    prev = prev.where(known.any(0), torch.full_like(prev, 0.5)).clamp(1e-4, 1 - 1e-4)
    return (prev / (1 - prev)).log().float()


class _OneModality(ProtocolView):
    """A train-time protocol applied to the whole modality set, read back for one modality.

    The network sees one modality, but a protocol names any of the dataset's (``drop_one`` of
    another modality is then a no-op for this reference; ``random_drop`` drops this one with its
    own ``p``): the other modalities are stood in by all-present masks.
    """

    def __init__(self, protocol: Protocol, modality: str, modalities: Sequence[str]):
        self.protocol, self.modality = protocol, modality
        self.modalities = sorted({*modalities, modality})

    def apply(self, mask: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        n = mask[self.modality].shape[0]
        full = {m: mask[m] if m in mask else torch.ones(n, 1, dtype=torch.bool) for m in self.modalities}
        out = self.protocol.apply(full, generator)
        return {m: out[m] for m in mask}


@register_method("large_ref", family=True)
class LargeRef(SimpleFusion):
    net_class = TeacherRefNet
    variant: ClassVar[str]

    def __init__(self, params: dict[str, Any]):
        if not hasattr(type(self), "variant"):
            raise TypeError("large_ref is a family: create `large_ref_<modality>` (e.g. large_ref_note)")
        super().__init__(params)

    def view(self, data: TensorData) -> TensorData:
        m = self.variant
        if m not in data.teacher:
            have = sorted(data.teacher) or "none"
            raise ValueError(f"{self.name}: modality {m!r} has no teacher embedding in this dataset "
                             f"(modalities with a teacher: {have}); declare its teacher or drop "
                             f"{self.name} from `methods`")
        present = data.teacher_mask[m].bool()
        if m in data.mask:
            present = present & data.mask[m].bool().any(dim=1)
        return replace(data, x={m: [data.teacher[m]]}, mask={m: present[:, None]},
                       expert_names={m: [f"{m}_teacher"]}, expert_roles={m: ["teacher"]}, teacher={}, teacher_mask={})

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        self._prior = prior_logits(train.y, train.task)
        tv, vv = self.view(train), self.view(val)
        keep_t = np.flatnonzero(tv.mask[self.variant][:, 0].numpy())
        keep_v = np.flatnonzero(vv.mask[self.variant][:, 0].numpy())
        if keep_t.size < 2 or keep_v.size < 1:
            raise ValueError(f"{self.name}: the {self.variant!r} teacher is present in {keep_t.size} training and "
                             f"{keep_v.size} validation samples; too few to train a reference")
        # Train (and stop early) on the rows where the teacher is present.
        super().fit(train.subset(keep_t), val.subset(keep_v), seeds,
                    _OneModality(protocol, self.variant, train.modalities))

    def prepare(self, net: torch.nn.Module, train: TensorData) -> None:
        m = self.variant
        rows = train.x[m][0][train.mask[m][:, 0]]
        if rows.shape[0] >= 2:  # else (a train protocol removes the modality from every row): no scaling
            net.mean.copy_(rows.mean(0))
            sd = rows.std(0)
            net.std.copy_(torch.where(sd < 1e-4, torch.ones_like(sd), sd))
        net.prior.copy_(self._prior)
