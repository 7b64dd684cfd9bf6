"""``momke``: MoMKE (Xu, Jiang & Liang, "Leveraging Knowledge of Modality Experts for Incomplete
Multimodal Learning", ACM MM 2024; reference code ``wxxv/MoMKE``), on the cached expert embeddings.

**Taken from the paper / reference code.**

- One *knowledge expert* per modality ``j``: a stack of ``depth`` residual blocks
  ``x ← x + (a + MLP(a))`` with ``a`` the block's self-attention output (reference
  ``Attention_softmoe``: scaled dot-product attention, ``MLP = Linear-GELU-Dropout-Linear-Dropout``
  of width ``mlp_ratio · hidden``), input ``u_j``, the modality's projection (``in_proj``) with
  dropout.
- **Stage 1** (unimodal training): each expert reads only its own modality and has its own
  classification head; the loss is the sum over modalities of each head's task loss on the
  samples where the modality is present.
- **Stage 2** (mixture of modality knowledge experts): every present modality ``m`` is passed
  through *all* ``M`` experts; a per-modality router (``MLP(hidden → hidden·mlp_ratio → M)``
  on ``u_m``, softmax) weights their outputs, ``x_m = Σ_j w_mj E_j(u_m)``; absent modalities are
  zero; the joint vector ``x = [x_1 … x_M]`` goes through ``x + Dropout(ReLU(Linear(x)))`` and a
  linear head; the loss is the joint task loss only. All parameters keep training (the reference
  code does not freeze the experts in stage 2).
- Stage 1 takes the first ``first_stage_epochs`` epochs of the budget (reference: 100 of 200,
  the default here is half of ``max_epochs``), stage 2 the rest.

**Decided here (the paper is about one feature vector per modality; ours are committees).**

- *Modality* is our modality; its input ``u_m`` is the mean, over the committee experts present
  for the sample, of one linear projection per expert to ``hidden_dim`` (the reference's
  ``in_proj``, one per expert instead of one per modality); ``m`` is absent when no expert of
  its committee is present. Committee experts are not MoMKE's "knowledge experts" (those are
  the per-modality networks above).
- Our samples are single vectors, not utterance sequences: self-attention over a one-token
  sequence is exactly its value projection, so each block computes ``a = V x`` (the query and
  key maps of the reference have no effect on a one-token sequence and are left out).
- The two stages are two runs of the shared :class:`~medmix.training.trainer.EnsembleTrainer`
  (same optimiser, schedule, early stopping and checkpoint choice as every method): stage 1 stops
  early on the validation stage-1 loss and keeps its best epoch (the reference code intends to
  keep the best stage-1 experts, chosen there on *training* accuracy), stage 2 on the configured
  criterion; the warm-up restarts with stage 2's fresh optimiser (the reference: one Adam run,
  no warm-up). ``early_stopping`` applies to stage 2; stage 1 always uses its validation loss.
- The router's MLP has no dropout (reference: ``drop_rate`` 0 in its default runs).

Params: the ``training`` keys plus ``hidden_dim``, ``dropout`` and ``depth`` (default 4, the
reference runs), ``mlp_ratio`` (default 1), ``first_stage_epochs`` (default ``max_epochs // 2``).
Prediction columns ``momke:<modality>:<knowledge expert>`` hold the stage-2 router weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
import torch
from torch import nn

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.simple_fusion import SimpleFusion
from medmix.models.losses import modality_task_loss, task_loss
from medmix.models.medmix import SeededDropout
from medmix.protocols import Protocol
from medmix.training.trainer import Batch, EnsembleTrainer, Member, seeded_init


class _Mlp(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)
        self.drop1, self.drop2 = SeededDropout(dropout), SeededDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(nn.functional.gelu(self.fc1(x)))))


class KnowledgeExpert(nn.Module):
    """``depth`` blocks ``x ← x + (Vx + MLP(Vx))`` (one-token self-attention is the value map)."""

    def __init__(self, hidden: int, depth: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.values = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.mlps = nn.ModuleList(_Mlp(hidden, max(1, int(hidden * mlp_ratio)), hidden, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for value, mlp in zip(self.values, self.mlps, strict=True):
            a = value(x)
            x = x + a + mlp(a)
        return x


class MoMKENet(nn.Module):
    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float,
                 depth: int = 4, mlp_ratio: float = 1.0):
        super().__init__()
        self.modalities = list(dims)
        self.dims = {m: list(ds) for m, ds in dims.items()}
        n_mod = len(self.modalities)
        self.in_proj = nn.ModuleDict({m: nn.ModuleList(nn.Linear(d, hidden) for d in ds) for m, ds in dims.items()})
        self.in_drop = SeededDropout(dropout)
        self.experts = nn.ModuleList(KnowledgeExpert(hidden, depth, mlp_ratio, dropout) for _ in self.modalities)
        self.unimodal_heads = nn.ModuleList(nn.Linear(hidden, n_out) for _ in self.modalities)
        self.routers = nn.ModuleList(_Mlp(hidden, max(1, int(hidden * mlp_ratio)), n_mod, 0.0) for _ in self.modalities)
        self.proj1 = nn.Linear(n_mod * hidden, n_mod * hidden)
        self.out_drop = SeededDropout(dropout)
        self.head = nn.Linear(n_mod * hidden, n_out)

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def inputs(self, x: dict[str, list[torch.Tensor]],
               mask: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per modality ``u_m`` ``[N, H]`` (0 where absent) and the modality presence ``[N, M]``."""
        us, present = [], []
        for m in self.modalities:
            mk = mask[m].bool()
            total = sum(torch.where(mk[:, k : k + 1], proj(x[m][k]).float(), 0.0)
                        for k, proj in enumerate(self.in_proj[m]))
            count = mk.float().sum(1, keepdim=True)
            us.append(self.in_drop(total / count.clamp_min(1.0)))
            present.append(mk.any(1))
        return us, torch.stack(present, 1)

    def unimodal_logits(self, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: each expert on its own modality, ``[N, M, C]``, and the presence ``[N, M]``."""
        us, present = self.inputs(x, mask)
        logits = [head(expert(u)).float()
                  for u, expert, head in zip(us, self.experts, self.unimodal_heads, strict=True)]
        return torch.stack(logits, 1), present

    def mixture(self, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: logits ``[N, C]`` and router weights ``[N, M, M]`` (0 for absent modalities)."""
        us, present = self.inputs(x, mask)
        parts, weights = [], []
        for i, u in enumerate(us):
            w = torch.softmax(self.routers[i](u).float(), dim=-1)
            out = sum(w[:, j : j + 1] * expert(u).float() for j, expert in enumerate(self.experts))
            keep = present[:, i : i + 1]
            parts.append(torch.where(keep, out, 0.0))
            weights.append(torch.where(keep, w, 0.0))
        joint = torch.cat(parts, 1)
        hidden = joint + self.out_drop(torch.relu(self.proj1(joint)))
        return self.head(hidden).float(), torch.stack(weights, 1)

    def forward(self, x, mask) -> torch.Tensor:
        return self.mixture(x, mask)[0]

    def extras(self, x, mask) -> dict[str, torch.Tensor]:
        """Router weights ``[N, M·M]`` (modality-major)."""
        return {"momke": self.mixture(x, mask)[1].flatten(1)}


class _Stage1:
    """Sum over modalities of each expert head's task loss where its modality is present."""

    def __init__(self, task: str):
        self.task = task

    def _loss(self, model: MoMKENet, batch: Batch) -> torch.Tensor:
        logits, present = model.unimodal_logits(batch.x, batch.mask)
        # modality_task_loss is the mean over modalities with a known label; the reference sums.
        n = present.any(0).float().sum().clamp_min(1.0)
        return modality_task_loss(logits, batch.y, present, self.task) * n

    def loss(self, member: Member, batch: Batch, epoch: int):
        return self._loss(member.model, batch), {}

    def val_loss(self, model: MoMKENet, batch: Batch) -> torch.Tensor:
        return self._loss(model, batch)


class _Stage2:
    def __init__(self, task: str):
        self.task = task

    def loss(self, member: Member, batch: Batch, epoch: int):
        return task_loss(member.model(batch.x, batch.mask), batch.y, self.task), {}

    def val_loss(self, model: MoMKENet, batch: Batch) -> torch.Tensor:
        return task_loss(model(batch.x, batch.mask), batch.y, self.task)

    def val_logits(self, model: MoMKENet, batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask)


@register_method("momke")
class MoMKE(SimpleFusion):
    extra_params = ("depth", "mlp_ratio", "first_stage_epochs")

    def extra_settings(self, train: TensorData) -> dict[str, Any]:
        return {"depth": int(self.params.get("depth", 4)), "mlp_ratio": float(self.params.get("mlp_ratio", 1.0))}

    def build(self, settings: dict[str, Any]) -> nn.Module:
        return MoMKENet(settings["dims"], settings["n_out"], settings["hidden"], settings["dropout"],
                        settings["depth"], settings["mlp_ratio"])

    def first_stage_epochs(self) -> int:
        total = self.train_config.max_epochs
        first = int(self.params.get("first_stage_epochs", total // 2))
        if not 0 < first < total:
            raise ValueError(f"momke: first_stage_epochs must be in 1..{total - 1} (max_epochs {total}), got {first}")
        return first

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        first = self.first_stage_epochs()
        p = self.params
        self.settings = {"dims": train.dims(), "n_out": len(train.labels), "hidden": int(p.get("hidden_dim", 256)),
                         "dropout": float(p.get("dropout", 0.1)), **self.extra_settings(train)}
        members = []
        for seed in seeds:
            net = seeded_init(int(seed), lambda: self.build(self.settings))
            members.append(Member(int(seed), net, None, [(list(net.parameters()), 1.0)]))
        c = self.train_config
        stage1 = EnsembleTrainer(replace(c, max_epochs=first, early_stopping="val_loss"), _Stage1(train.task))
        curves1 = stage1.fit(members, train, val, protocol, train.modalities)
        stage2 = EnsembleTrainer(replace(c, max_epochs=c.max_epochs - first), _Stage2(train.task))
        curves2 = stage2.fit(members, train, val, protocol, train.modalities)
        curves2["epoch"] += first
        self._curves = pd.concat([curves1.assign(stage=1), curves2.assign(stage=2)], ignore_index=True)
        self.models = [m.model for m in members]
        self.seeds = [m.seed for m in members]

    def predict(self, data: TensorData):
        pred = super().predict(data)
        if "momke" in pred.extras:
            mods = list(self.settings["dims"])
            pred.extra_columns["momke"] = [f"{m}:{j}" for m in mods for j in mods]
        return pred
