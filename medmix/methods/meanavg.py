"""MeanAvg baseline: per-expert linear projection, mean over every present expert, MLP head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.base import FusionMethod, Prediction
from medmix.protocols import Protocol
from medmix.training.losses import task_loss, to_probabilities


class MeanFusionNet(nn.Module):
    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float):
        super().__init__()
        self.keys = [(m, k) for m, ds in dims.items() for k in range(len(ds))]
        self.proj = nn.ModuleList(nn.Linear(dims[m][k], hidden) for m, k in self.keys)
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        total, count = 0.0, 0.0
        for proj, (m, k) in zip(self.proj, self.keys, strict=True):
            w = mask[m][:, k : k + 1].to(x[m][k].dtype)
            total = total + proj(x[m][k]) * w
            count = count + w
        # A sample with nothing present gets the head's bias (count clamps to 1, total is 0).
        return self.head(total / count.clamp_min(1.0))


@register_method("meanavg")
class MeanAvg(FusionMethod):
    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        p = self.params
        self.models, self._curves = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            net = MeanFusionNet(train.dims(), len(train.labels), int(p.get("hidden_dim", 256)), float(p.get("dropout", 0.1)))
            opt = torch.optim.AdamW(net.parameters(), lr=float(p.get("baseline_lr", 1e-3)), weight_decay=float(p.get("weight_decay", 1e-2)))
            best, best_state, bad = float("inf"), None, 0
            bs = int(p.get("batch_size", 256))
            for epoch in range(int(p.get("max_epochs", 200))):
                net.train()
                order = torch.randperm(train.n, generator=gen)
                losses = []
                for s in range(0, train.n, bs):
                    b = train.subset(order[s : s + bs])
                    b = b.with_mask(protocol.apply(b.mask, gen))
                    loss = task_loss(net(b.x, b.mask), b.y, train.task)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                net.eval()
                with torch.no_grad():
                    vloss = task_loss(net(val.x, val.mask), val.y, val.task).item()
                self._curves.append({"seed": seed, "epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": vloss})
                if vloss < best - 1e-6:
                    best, bad = vloss, 0
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
                    if bad >= int(p.get("patience", 20)):
                        break
            net.load_state_dict(best_state)
            self.models.append(net.eval())

    @torch.no_grad()
    def predict(self, data: TensorData) -> Prediction:
        probs = [to_probabilities(net(data.x, data.mask), data.task).numpy() for net in self.models]
        return Prediction(np.stack(probs))

    def curves(self) -> pd.DataFrame:
        return pd.DataFrame(self._curves)
