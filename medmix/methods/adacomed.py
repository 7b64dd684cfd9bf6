"""``adacomed``: AdaCoMed (Chen et al., CVPR 2025; partial reference code ``Zoew420/AdaCoMed``),
large–small model collaboration, on the cached expert (and teacher) embeddings.

**Taken from the paper / reference code.**

- *Large branch*: each modality's large-model embedding is projected to ``hidden_dim``; the
  modality tokens pass a self-attention layer (residual, LayerNorm) and a *mixture of modality
  experts* (residual, LayerNorm): one two-layer ReLU MLP expert per modality on its own token, one
  joint expert on all tokens together, softmax gate on the concatenated tokens; then a linear
  projection to the task head's input width gives the large feature.
- *Small branch*: a small multimodal model's feature; one task head (the small model's classifier)
  is shared by both branches: ``ℓ_L = head(f_L)``, ``ℓ_S = head(f_S)``.
- *Contrastive alignment* of the L2-normalised ``f_L`` and ``f_S`` (InfoNCE over the batch,
  temperature 0.07, positives on the diagonal), weight ``contrastive_weight`` (reference default
  0.5); the task loss is on the fused logits ``w_L ℓ_L + w_S ℓ_S``.
- *Adaptive weighting*: ``weighting: gaussian`` (default) — the reference's Gaussian scheme
  ``w_S = exp(−a²/2σ²)``, ``w_L = 1 − w_S`` (``σ = 1``) on the contrastive similarity ``a``;
  ``weighting: learnable`` — the reference code's other scheme, two learned logits through a
  softmax (not a similarity weighting).
- *Training schedule* (``schedule``): the reference code (``Zoew420/AdaCoMed``, ``model.py``,
  ``ContrastiveCoTaskTraining``) takes an already *trained* small model, freezes every one of its
  parameters except its ``classifier`` (which it reuses as the shared task head), and trains the
  large branch, the fusion weights and that classifier on the full objective.
  ``schedule: two_stage`` (default) does the same in two fits: **stage 1** trains the small
  branch with its classifier alone (``head(f_S)``, task loss; the committee slots only, no
  teacher is read); **stage 2** freezes the small branch (``small_proj``, ``small_out``: no
  gradient, no optimiser update, no weight decay) and trains everything else — the large branch,
  ``fusion_logits`` and the classifier ``head`` — on the full objective (task loss on the fused
  logits + ``contrastive_weight`` · InfoNCE). The small model's classifier *is* the network's
  ``head`` (the reference shares it the same way), so no extra head is added.
  ``schedule: joint`` — the earlier behaviour of this module, not the reference's: one fit of every
  parameter from scratch on the full objective.

**Decided here.**

- *Large models* are our per-modality **teachers** where the dataset declares one (standardised
  inside the model with a mean/std fit on the training rows where present, stored in the
  checkpoint); for a modality without a teacher, the "large model" is its **committee**: the
  mean over present experts of one linear projection per expert. A teacher counts as present only
  where its modality is (a modality dropped by a protocol drops its teacher). Unlike MedMIX, this
  method reads teachers at prediction time: that is the large–small collaboration it is.
- The *small multimodal model* is a small fusion network over every committee expert of every
  modality: one linear projection per expert, the mean over the present ones, GELU, a linear map.
- The reference's self-attention runs over the batch axis (a 2-D input to
  ``nn.MultiheadAttention``); here it runs over the modality tokens, absent modalities masked out.
  The reference has one expert per modality and one joint expert for its two modalities; here the
  same for ``M`` modalities, absent modalities' experts gated out.
- The reference derives the weights from the batch mean of ``exp(s_ii)/(exp(s_ii)+mean_j exp(s_ij))``
  — a prediction would depend on the other patients of its batch. Here ``a`` is each sample's own
  alignment, ``(1 + cos(f_L, f_S)) / 2`` in [0, 1].
- A sample with no large-model input uses the small branch alone (``w_L = 0``).
- ``two_stage``: each stage is one run of the shared
  :class:`~medmix.training.trainer.EnsembleTrainer` with the whole ``training`` budget
  (``max_epochs``, ``patience``, ``early_stopping``, grid; each stage restarts the warm-up with its
  own optimiser and keeps its best validation epoch, stage 1 judged on the small model's
  validation logits). Every seed's stage 2 starts from its own stage-1 result, so a seed trains
  the same alone or with others. Curves have a ``stage`` column (1, 2; stage 2's epochs follow
  stage 1's ``max_epochs``); ``selection`` is stage 2's choice with stage 1's under ``stage1``.
  Inference is the same network for both schedules.

Params: the ``training`` keys plus ``hidden_dim``, ``dropout``, ``weighting``
(``gaussian`` | ``learnable``), ``contrastive_weight`` (default 0.5), ``schedule`` (``two_stage``,
the default, | ``joint``). Prediction columns
``adacomed:large`` hold ``w_L`` per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medmix.data import Standardizer, TensorData
from medmix.methods import register_method
from medmix.methods.simple_fusion import SimpleFusion
from medmix.models.losses import task_loss
from medmix.models.medmix import SeededDropout
from medmix.protocols import Protocol, ProtocolView, prefit_view
from medmix.training.trainer import Batch, EnsembleTrainer, Member, seeded_init

TEACHER_SUFFIX = "@large"
TEMPERATURE = 0.07
WEIGHTINGS = ("gaussian", "learnable")
SCHEDULES = ("two_stage", "joint")


class _Expert(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _masked_mean(projs: nn.ModuleList, xs: list[torch.Tensor], mk: torch.Tensor) -> torch.Tensor:
    total = sum(torch.where(mk[:, k : k + 1], p(xs[k]).float(), 0.0) for k, p in enumerate(projs))
    return total / mk.float().sum(1, keepdim=True).clamp_min(1.0)


class AdaCoMedNet(nn.Module):
    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float,
                 modalities: list[str], teacher_dims: dict[str, int], weighting: str = "gaussian"):
        super().__init__()
        self.modalities = list(modalities)
        self.teachers = dict(teacher_dims)
        self.weighting = weighting
        n_mod = len(self.modalities)
        # small branch: every committee expert
        self.small_proj = nn.ModuleDict({m: nn.ModuleList(nn.Linear(d, hidden) for d in dims[m])
                                         for m in self.modalities})
        self.small_out = nn.Linear(hidden, hidden)
        # large branch: a teacher projection, or the committee's own projections
        self.large_proj = nn.ModuleDict({
            m: nn.ModuleList([nn.Linear(self.teachers[m], hidden)] if m in self.teachers else
                             [nn.Linear(d, hidden) for d in dims[m]])
            for m in self.modalities})
        for m, d in self.teachers.items():
            self.register_buffer(f"t_mean_{m}", torch.zeros(d))
            self.register_buffer(f"t_std_{m}", torch.ones(d))
        heads = 4 if hidden % 4 == 0 else 1
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(n_mod * hidden), nn.LayerNorm(n_mod * hidden)
        self.experts = nn.ModuleList(_Expert(hidden, hidden, n_mod * hidden) for _ in self.modalities)
        self.joint = _Expert(n_mod * hidden, hidden, n_mod * hidden)
        self.gate = nn.Linear(n_mod * hidden, n_mod + 1)
        self.drop = SeededDropout(dropout)
        self.large_out = nn.Linear(n_mod * hidden, hidden)
        self.head = nn.Linear(hidden, n_out)
        self.fusion_logits = nn.Parameter(torch.zeros(2))

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def small_branch_parameters(self) -> list[nn.Parameter]:
        """The small multimodal model without its classifier (``small_proj``, ``small_out``):
        frozen in stage 2 of ``schedule: two_stage``."""
        return [*self.small_proj.parameters(), *self.small_out.parameters()]

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The small model's classifier, ``head`` (shared by both branches; trained in both stages)."""
        return list(self.head.parameters())

    def small_feature(self, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_S`` ``[N, H]`` (committee experts only) and the modality presence ``[N, M]``."""
        small_present = torch.stack([mask[m].bool().any(1) for m in self.modalities], 1)
        small = sum(torch.where(small_present[:, i : i + 1], _masked_mean(self.small_proj[m], x[m], mask[m].bool()),
                                0.0)
                    for i, m in enumerate(self.modalities))
        small = self.small_out(F.gelu(small / small_present.float().sum(1, keepdim=True).clamp_min(1.0)))
        return small, small_present

    def small_logits(self, x, mask) -> torch.Tensor:
        """The small model alone, ``head(f_S)`` (stage 1 of ``schedule: two_stage``)."""
        return self.head(self.small_feature(x, mask)[0]).float()

    def features(self, x, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``f_L``, ``f_S`` ``[N, H]``, large presence ``[N]`` and the MoME gate ``[N, M+1]``."""
        small, small_present = self.small_feature(x, mask)
        tokens, present = [], []
        for i, m in enumerate(self.modalities):
            if m in self.teachers:
                key = m + TEACHER_SUFFIX
                p = mask[key][:, 0].bool() & small_present[:, i]
                raw = torch.where(p[:, None], x[key][0].float(), 0.0)
                z = ((raw - getattr(self, f"t_mean_{m}")) / getattr(self, f"t_std_{m}")).clamp(
                    -Standardizer.CLIP, Standardizer.CLIP)
                tok = self.large_proj[m][0](z)
            else:
                p = small_present[:, i]
                tok = _masked_mean(self.large_proj[m], x[m], mask[m].bool())
            tokens.append(torch.where(p[:, None], tok.float(), 0.0))
            present.append(p)
        t = torch.stack(tokens, 1)
        pres = torch.stack(present, 1)
        any_large = pres.any(1)
        # keys of absent modalities are masked; a sample with none present attends to all (zeros) and is dropped below
        pad = ~pres & any_large[:, None]
        att = self.attn(t, t, t, key_padding_mask=pad, need_weights=False)[0]
        flat = torch.where(pres[:, :, None], t + self.drop(att), 0.0).flatten(1)
        flat = self.norm1(flat)
        n, m_count = flat.shape[0], len(self.modalities)
        outs = [e(flat.view(n, m_count, -1)[:, i]) for i, e in enumerate(self.experts)] + [self.joint(flat)]
        score = self.gate(flat).float()
        avail = torch.cat([pres, any_large[:, None]], 1)
        score = torch.where(avail, score, float("-inf"))
        g = torch.softmax(torch.where(any_large[:, None], score, 0.0), -1) * avail
        moe = sum(g[:, j : j + 1] * o.float() for j, o in enumerate(outs))
        large = self.large_out(self.norm2(flat + self.drop(moe)))
        return large.float(), small.float(), any_large, g

    def weights(self, large: torch.Tensor, small: torch.Tensor, any_large: torch.Tensor) -> torch.Tensor:
        """``w_L`` per sample ``[N]`` (``w_S = 1 − w_L``)."""
        if self.weighting == "learnable":
            w = torch.softmax(self.fusion_logits, 0)[0].expand(large.shape[0])
        else:
            a = (1.0 + F.cosine_similarity(large, small, dim=-1, eps=1e-8)) / 2.0
            w = 1.0 - torch.exp(-a.pow(2) / 2.0)
        return torch.where(any_large, w, 0.0)

    def outputs(self, x, mask):
        large, small, any_large, gate = self.features(x, mask)
        w = self.weights(large, small, any_large)[:, None]
        logits = w * self.head(large).float() + (1 - w) * self.head(small).float()
        return logits, large, small, any_large, w

    def forward(self, x, mask) -> torch.Tensor:
        return self.outputs(x, mask)[0]

    def extras(self, x, mask) -> dict[str, torch.Tensor]:
        return {"adacomed": self.outputs(x, mask)[4]}


def info_nce(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over ``rows`` of ``−log(exp(s_ii) / Σ_j exp(s_ij))``, ``s = cos / 0.07`` among ``rows``."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    s = (a @ b.T) / TEMPERATURE
    s = s.masked_fill(~rows[None, :], float("-inf"))
    s = torch.where(rows[:, None], s, 0.0)
    loss = -(torch.diagonal(s) - torch.logsumexp(s, dim=1))
    return (loss * rows).sum() / rows.sum().clamp_min(1)


class _Objective:
    def __init__(self, task: str, weight: float):
        self.task, self.weight = task, weight

    def loss(self, member: Member, batch: Batch, epoch: int):
        logits, large, small, any_large, _ = member.model.outputs(batch.x, batch.mask)
        task = task_loss(logits, batch.y, self.task)
        contrast = info_nce(large, small, any_large)
        return task + self.weight * contrast, {"task_loss": task.detach(), "contrastive_loss": contrast.detach()}

    def val_logits(self, model: AdaCoMedNet, batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask)

    def val_loss(self, model: AdaCoMedNet, batch: Batch) -> torch.Tensor:
        return task_loss(model(batch.x, batch.mask), batch.y, self.task)


class _SmallObjective:
    """Stage 1 of ``schedule: two_stage``: the task loss of the small model alone, ``head(f_S)``."""

    def __init__(self, task: str):
        self.task = task

    def loss(self, member: Member, batch: Batch, epoch: int):
        return task_loss(member.model.small_logits(batch.x, batch.mask), batch.y, self.task), {}

    def val_logits(self, model: AdaCoMedNet, batch: Batch) -> torch.Tensor:
        return model.small_logits(batch.x, batch.mask)

    def val_loss(self, model: AdaCoMedNet, batch: Batch) -> torch.Tensor:
        return task_loss(model.small_logits(batch.x, batch.mask), batch.y, self.task)


class _CommitteeOnly(ProtocolView):
    """A protocol applied to the real modalities only; the teacher slots keep their masks (the model
    ties each teacher to its modality's presence)."""

    def __init__(self, protocol: Protocol, modalities: Sequence[str]):
        self.protocol, self.modalities = protocol, list(modalities)

    def apply(self, mask: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = self.protocol.apply({m: mask[m] for m in self.modalities}, generator)
        return {m: out.get(m, mask[m]) for m in mask}


@register_method("adacomed")
class AdaCoMed(SimpleFusion):
    extra_params = ("weighting", "contrastive_weight", "schedule")

    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        if self.params.get("weighting", "gaussian") not in WEIGHTINGS:
            raise ValueError(f"adacomed: weighting must be one of {WEIGHTINGS}, got {self.params['weighting']!r}")
        self.schedule = self.params.get("schedule", "two_stage")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"adacomed: schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def view(self, data: TensorData) -> TensorData:
        """The committee plus one slot ``<modality>@large`` per teacher embedding."""
        x, mask = dict(data.x), dict(data.mask)
        names, roles = dict(data.expert_names), dict(data.expert_roles)
        for m, t in data.teacher.items():
            if m not in data.x:
                continue
            key = m + TEACHER_SUFFIX
            x[key], mask[key] = [t], data.teacher_mask[m].bool()[:, None]
            names[key], roles[key] = [f"{m}_teacher"], ["teacher"]
        return replace(data, x=x, mask=mask, expert_names=names, expert_roles=roles, teacher={}, teacher_mask={})

    def extra_settings(self, train: TensorData) -> dict[str, Any]:
        modalities = [m for m in train.x if not m.endswith(TEACHER_SUFFIX)]
        teachers = {m: int(train.x[m + TEACHER_SUFFIX][0].shape[1]) for m in modalities
                    if m + TEACHER_SUFFIX in train.x}
        return {"modalities": modalities, "teachers": teachers,
                "weighting": str(self.params.get("weighting", "gaussian"))}

    def build(self, settings: dict[str, Any]) -> nn.Module:
        return AdaCoMedNet(settings["dims"], settings["n_out"], settings["hidden"], settings["dropout"],
                           settings["modalities"], {m: int(d) for m, d in settings["teachers"].items()},
                           settings["weighting"])

    def prepare(self, net: nn.Module, train: TensorData) -> None:
        for m in net.teachers:
            key = m + TEACHER_SUFFIX
            rows = train.x[key][0][train.mask[key][:, 0] & train.mask[m].any(1)]
            if rows.shape[0] < 2:
                continue
            sd = rows.std(0)
            getattr(net, f"t_mean_{m}").copy_(rows.mean(0))
            getattr(net, f"t_std_{m}").copy_(torch.where(sd < 1e-4, torch.ones_like(sd), sd))

    def objective(self, train: TensorData):
        return _Objective(train.task, float(self.params.get("contrastive_weight", 0.5)))

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        if self.schedule == "joint":
            super().fit(train, val, seeds, _CommitteeOnly(protocol, train.modalities))
            return
        self.fit_small_branch(train, val, seeds, protocol)
        self._fit_large_branch(train, val, protocol)

    def fit_small_branch(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        """Stage 1 of ``schedule: two_stage`` alone: build every seed's network (teacher statistics
        from :func:`~medmix.protocols.prefit_view`, as :meth:`SimpleFusion.fit`) and train its small
        branch and classifier on the task loss of ``head(f_S)``; the large branch keeps its initial
        weights. Sets ``models``, ``seeds``, ``selection`` and the stage-1 curves."""
        committee = _CommitteeOnly(protocol, train.modalities)
        train, val = self.view(train), self.view(val)
        p = self.params
        self.settings = {"dims": train.dims(), "n_out": len(train.labels), "hidden": int(p.get("hidden_dim", 256)),
                         "dropout": float(p.get("dropout", 0.1)), **self.extra_settings(train)}
        prefit = prefit_view(train, committee)  # training-derived buffers see what the protocol leaves
        members = []
        for seed in seeds:
            net = seeded_init(int(seed), lambda: self.build(self.settings))
            self.prepare(net, prefit)
            members.append(Member(int(seed), net, None,
                                  [(net.small_branch_parameters() + net.classifier_parameters(), 1.0)]))
        trainer = EnsembleTrainer(self.train_config, _SmallObjective(train.task))
        # the committee slots only: the small model never reads a teacher
        curves = trainer.fit(members, train, val, committee, self.settings["modalities"])
        self._curves = curves.assign(stage=1)
        self.selection = trainer.selection
        self.models = [m.model for m in members]
        self.seeds = [m.seed for m in members]

    def _fit_large_branch(self, train: TensorData, val: TensorData, protocol: Protocol) -> None:
        """Stage 2 on the networks :meth:`fit_small_branch` left: the small branch frozen except its
        classifier, everything else trained on the full objective."""
        committee = _CommitteeOnly(protocol, train.modalities)
        train, val = self.view(train), self.view(val)
        members = []
        for seed, net in zip(self.seeds, self.models, strict=True):
            frozen = {id(q) for q in net.small_branch_parameters()}
            members.append(Member(seed, net, None, [([q for q in net.parameters() if id(q) not in frozen], 1.0)]))
            for q in net.small_branch_parameters():
                q.requires_grad_(False)
        try:
            trainer = EnsembleTrainer(self.train_config, self.objective(train))
            curves = trainer.fit(members, train, val, committee, train.modalities)
        finally:
            for net in self.models:
                for q in net.small_branch_parameters():
                    q.requires_grad_(True)
        curves["epoch"] += self.train_config.max_epochs  # after stage 1's budget
        self._curves = pd.concat([self._curves, curves.assign(stage=2)], ignore_index=True)
        stage1 = {int(e["seed"]): {k: v for k, v in e.items() if k != "seed"} for e in self.selection}
        self.selection = [{**e, "stage1": stage1[int(e["seed"])]} for e in trainer.selection]
        self.models = [m.model for m in members]

    def predict(self, data: TensorData):
        pred = super().predict(data)
        if "adacomed" in pred.extras:
            pred.extra_columns["adacomed"] = ["large"]
        return pred
