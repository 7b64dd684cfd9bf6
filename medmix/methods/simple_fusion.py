"""The shared machinery of the simple fusion rules (paper §4.1: MeanAvg, Concat, Max, Attention)
and of the small reference heads (``mask_only``, ``large_ref_<modality>``).

Every one of them is the same network up to one step:

1. **projection** per expert: ``z_k = Linear_k(e_k)`` into a shared width ``hidden_dim`` (one
   linear map per expert of every modality, in committee order), and ``z_k = 0`` where expert
   ``k`` is absent (``torch.where``, so whatever sits in an absent slot — 0, NaN, ±inf — never
   reaches the output);
2. **pooling** of the ``K`` projections (all experts of all modalities in one set: the rules fuse
   at the *expert-feature* level, in one stage, with no per-modality step) into one vector —
   the only part a rule defines (:meth:`FusionNet.pool`);
3. **head**: ``GELU → Dropout → Linear`` to the logits (with step 1 a one-hidden-layer MLP).

Each method is trained by the same :class:`~medmix.training.trainer.EnsembleTrainer` as MedMIX:
the same optimiser, schedule, early stopping and checkpoint choice (``TrainConfig``), at the
``training`` section's ``lr`` (the same learning rate as every neural method), with the task loss
as the whole objective. Checkpoints hold each seed's ``state_dict``; the settings hold the
expert dims, the output width, ``hidden_dim`` and ``dropout``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from medmix.data import TensorData
from medmix.methods.base import FusionMethod, Prediction
from medmix.models.losses import task_loss, to_probabilities
from medmix.models.medmix import SeededDropout
from medmix.protocols import Protocol, prefit_view
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


def check_lr_params(params: dict[str, Any], method: str) -> None:
    """``baseline_lr`` is gone: every neural method takes ``lr`` from the same ``training`` section."""
    if "baseline_lr" in params:
        raise ValueError(
            f"{method}: `baseline_lr` was removed; every neural method now uses `lr` from the `training` section "
            f"(set `method_params: {{{method}: {{lr: ...}}}}` to give this method another one)"
        )


class FusionNet(nn.Module):
    """Projection per expert, a pooling rule (subclasses), GELU-Dropout-Linear head."""

    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float):
        super().__init__()
        self.keys = [(m, k) for m, ds in dims.items() for k in range(len(ds))]
        self.hidden = hidden
        self.proj = nn.ModuleList(nn.Linear(dims[m][k], hidden) for m, k in self.keys)
        self.head = nn.Sequential(nn.GELU(), SeededDropout(dropout), nn.Linear(self.pooled_dim(), n_out))

    def pooled_dim(self) -> int:
        return self.hidden

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        self.head[1].generator = generator

    def presence(self, mask: dict[str, torch.Tensor]) -> torch.Tensor:
        """bool ``[N, K]``: expert presence in the network's expert order."""
        return torch.cat([mask[m][:, k : k + 1] for m, k in self.keys], dim=1).bool()

    def project(self, x: dict[str, list[torch.Tensor]], present: torch.Tensor) -> list[torch.Tensor]:
        """Every expert's projection ``[N, H]`` (float32), exactly 0 where the expert is absent."""
        return [
            torch.where(present[:, i : i + 1], proj(x[m][k]).float(), 0.0)
            for i, (proj, (m, k)) in enumerate(zip(self.proj, self.keys, strict=True))
        ]

    def pool(self, z: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extras(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample, per-expert interpretability arrays ``[N, K]`` for the predictions (none here)."""
        return {}

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        present = self.presence(mask)
        return self.head(self.pool(self.project(x, present), present)).float()


class NetEnsembleState:
    """Mixin of a method that keeps one ``torch`` network per seed (``self.models``), built from
    ``self.settings`` by ``self.build``, and its training curves (``self._curves``): curves, export
    and restore of the method contract."""

    def curves(self) -> pd.DataFrame:
        return self._curves

    def export(self) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
        return dict(self.settings), [{k: v.detach().cpu() for k, v in n.state_dict().items()} for n in self.models]

    def restore(self, settings: dict[str, Any], states: list[dict[str, torch.Tensor]]) -> None:
        device, _ = resolve_runtime(self.train_config)
        self.settings = dict(settings)
        self.settings["dims"] = {m: [int(d) for d in ds] for m, ds in settings["dims"].items()}
        self.models = []
        for state in states:
            net = self.build(self.settings)
            net.load_state_dict(state)
            self.models.append(net.to(device).eval())


class TaskObjective:
    """The task loss alone (no auxiliary terms)."""

    def __init__(self, task: str):
        self.task = task

    def loss(self, member: Member, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return task_loss(member.model(batch.x, batch.mask), batch.y, self.task), {}

    def val_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return task_loss(model(batch.x, batch.mask), batch.y, self.task)

    def val_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask)


class SimpleFusion(NetEnsembleState, FusionMethod):
    """A :class:`FusionNet` per seed trained by the ensemble trainer; subclasses set :attr:`net_class`.

    Params: every :class:`TrainConfig` key (``lr`` included) plus ``hidden_dim`` (default 256) and
    ``dropout`` (default 0.1).
    """

    net_class: ClassVar[type[nn.Module]] = FusionNet

    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        check_lr_params(self.params, self.name)
        self.train_config = TrainConfig.from_params(self.params)
        self.models: list[nn.Module] = []
        self.settings: dict[str, Any] = {}
        self._curves = pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    # -- hooks (the identity for the fusion rules) ----------------------------------------------
    def view(self, data: TensorData) -> TensorData:
        """The data the network reads (``large_ref`` swaps in one teacher embedding)."""
        return data

    def prepare(self, net: nn.Module, train: TensorData) -> None:
        """Set training-derived buffers on a freshly built network (none here); ``train`` is what
        the train-time protocol leaves of the training split (:func:`~medmix.protocols.prefit_view`)."""

    def build(self, settings: dict[str, Any]) -> nn.Module:
        return self.net_class(settings["dims"], settings["n_out"], settings["hidden"], settings["dropout"])

    def extra_settings(self, train: TensorData) -> dict[str, Any]:
        """Settings beyond dims / n_out / hidden / dropout that :meth:`build` reads (none here)."""
        return {}

    def objective(self, train: TensorData):
        """What the trainer minimises (the task loss alone here)."""
        return TaskObjective(train.task)

    # -- contract ---------------------------------------------------------------------------------
    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        train, val = self.view(train), self.view(val)
        p = self.params
        self.settings = {"dims": train.dims(), "n_out": len(train.labels), "hidden": int(p.get("hidden_dim", 256)),
                         "dropout": float(p.get("dropout", 0.1)), **self.extra_settings(train)}
        members = []
        prefit = prefit_view(train, protocol)  # training-derived buffers see what the protocol leaves
        for seed in seeds:
            net = seeded_init(int(seed), lambda: self.build(self.settings))
            self.prepare(net, prefit)
            members.append(Member(int(seed), net, None, [(list(net.parameters()), 1.0)]))
        trainer = EnsembleTrainer(self.train_config, self.objective(train))
        self._curves = trainer.fit(members, train, val, protocol, train.modalities)
        self.selection = trainer.selection
        self.models = [m.model for m in members]
        self.seeds = [m.seed for m in members]

    def predict(self, data: TensorData) -> Prediction:
        if not self.models:
            raise RuntimeError(f"{self.name}.predict called before fit (or load_method)")
        data = self.view(data)
        want = {m: list(ds) for m, ds in self.settings["dims"].items()}
        got = {m: ds for m, ds in data.dims().items() if m in want}
        if got != want:
            raise ValueError(f"{self.name}: input expert dims {got} differ from the model's {want}")
        device, dtype = resolve_runtime(self.train_config)
        chunk = self.train_config.eval_batch_size
        probs: list[list[np.ndarray]] = [[] for _ in self.models]
        extras: list[dict[str, list[np.ndarray]]] = [{} for _ in self.models]
        with cpu_threads(self.train_config.threads), torch.no_grad():
            for lo in range(0, data.n, chunk):
                hi = min(data.n, lo + chunk)
                x = {m: [t[lo:hi].to(device, dtype or torch.float32) for t in data.x[m]] for m in want}
                mask = {m: data.mask[m][lo:hi].to(device) for m in want}
                for s, net in enumerate(self.models):
                    with autocast(device, dtype):
                        probs[s].append(to_probabilities(net.eval()(x, mask), data.task).cpu().numpy())
                        for key, value in net.extras(x, mask).items():
                            extras[s].setdefault(key, []).append(value.float().cpu().numpy())
        n_out = self.settings["n_out"]
        prob = np.stack([np.concatenate(p) if p else np.zeros((0, n_out), np.float32) for p in probs])
        if not extras[0]:
            return Prediction(prob)
        # Per-expert extras (e.g. attention weights): columns ``<key>:<modality>:<expert>``.
        names = [f"{m}:{data.expert_names.get(m, [str(k) for k in range(len(ds))])[k]}"
                 for m, ds in want.items() for k in range(len(ds))]
        out = {key: np.stack([np.concatenate(e[key]) for e in extras]) for key in extras[0]}
        return Prediction(prob, out, {key: names for key in out})


def masked_softmax(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Softmax over the present entries of each row; absent entries get 0, an all-absent row all 0."""
    any_present = present.any(dim=1, keepdim=True)
    s = torch.where(present, scores, float("-inf"))
    s = torch.where(any_present, s, 0.0)
    return torch.softmax(s, dim=1) * present


def attention_scores(z: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` scaled dot products of ``z`` ``[N, K, H]`` with ``query`` ``[H]``."""
    return (z @ query) / math.sqrt(z.shape[-1])
