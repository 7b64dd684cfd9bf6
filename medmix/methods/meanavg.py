"""MeanAvg baseline: per-expert linear projection, mean over every present expert, MLP head.

Trained by the same :class:`~medmix.training.trainer.EnsembleTrainer` as MedMIX (same schedule,
early stopping and reproducibility), at learning rate ``baseline_lr`` (default 1e-3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.base import FusionMethod, Prediction
from medmix.models.medmix import SeededDropout
from medmix.protocols import Protocol
from medmix.training.losses import task_loss, to_probabilities
from medmix.training.trainer import (
    Batch,
    EnsembleTrainer,
    Member,
    TrainConfig,
    autocast,
    cpu_threads,
    resolve_runtime,
    seeded_init,
)


class MeanFusionNet(nn.Module):
    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float):
        super().__init__()
        self.keys = [(m, k) for m, ds in dims.items() for k in range(len(ds))]
        self.proj = nn.ModuleList(nn.Linear(dims[m][k], hidden) for m, k in self.keys)
        self.head = nn.Sequential(nn.GELU(), SeededDropout(dropout), nn.Linear(hidden, n_out))

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        self.head[1].generator = generator

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        total, count = 0.0, 0.0
        for proj, (m, k) in zip(self.proj, self.keys, strict=True):
            w = mask[m][:, k : k + 1].float()
            total = total + torch.where(w > 0, proj(x[m][k]).float(), 0.0)
            count = count + w
        # A sample with nothing present gets the head's bias (count clamps to 1, total is 0).
        return self.head(total / count.clamp_min(1.0)).float()


class _MeanObjective:
    def __init__(self, task: str):
        self.task = task

    def loss(self, member: Member, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return task_loss(member.model(batch.x, batch.mask), batch.y, self.task), {}

    def val_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return task_loss(model(batch.x, batch.mask), batch.y, self.task)

    def val_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask)


@register_method("meanavg")
class MeanAvg(FusionMethod):
    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        self.train_config = TrainConfig.from_params({**self.params, "lr": float(self.params.get("baseline_lr", 1e-3))})
        self.models: list[MeanFusionNet] = []
        self._curves = pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        p = self.params
        dims, n_out = train.dims(), len(train.labels)
        hidden, dropout = int(p.get("hidden_dim", 256)), float(p.get("dropout", 0.1))
        members = []
        for seed in seeds:
            net = seeded_init(int(seed), lambda: MeanFusionNet(dims, n_out, hidden, dropout))
            members.append(Member(int(seed), net, None, [(list(net.parameters()), 1.0)]))
        trainer = EnsembleTrainer(self.train_config, _MeanObjective(train.task))
        self._curves = trainer.fit(members, train, val, protocol, train.modalities)
        self.models = [m.model for m in members]
        self.seeds = [m.seed for m in members]

    def predict(self, data: TensorData) -> Prediction:
        device, dtype = resolve_runtime(self.train_config)
        probs = []
        with cpu_threads(self.train_config.threads), torch.no_grad():
            x = {m: [t.to(device, dtype or torch.float32) for t in xs] for m, xs in data.x.items()}
            mask = {m: t.to(device) for m, t in data.mask.items()}
            for net in self.models:
                with autocast(device, dtype):
                    probs.append(to_probabilities(net.eval()(x, mask), data.task).cpu().numpy())
        return Prediction(np.stack(probs))

    def curves(self) -> pd.DataFrame:
        return self._curves

    def _settings(self, dims: dict[str, list[int]], n_out: int) -> dict[str, Any]:
        p = self.params
        return {"dims": dims, "n_out": n_out, "hidden": int(p.get("hidden_dim", 256)), "dropout": float(p.get("dropout", 0.1))}

    def export(self) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
        net = self.models[0]
        dims: dict[str, list[int]] = {}
        for proj, (m, _) in zip(net.proj, net.keys, strict=True):
            dims.setdefault(m, []).append(int(proj.in_features))
        settings = self._settings(dims, int(net.head[-1].out_features))
        return settings, [{k: v.detach().cpu() for k, v in n.state_dict().items()} for n in self.models]

    def restore(self, settings: dict[str, Any], states: list[dict[str, torch.Tensor]]) -> None:
        device, _ = resolve_runtime(self.train_config)
        self.models = []
        for state in states:
            net = MeanFusionNet(settings["dims"], settings["n_out"], settings["hidden"], settings["dropout"])
            net.load_state_dict(state)
            self.models.append(net.to(device).eval())
