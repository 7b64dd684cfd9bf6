"""MedMIX as a fusion method: one :class:`MedMIXNet` per seed, trained together by the ensemble trainer.

Params (the ``training`` config section merged with ``method_params.<name>``): every
:class:`~medmix.training.trainer.TrainConfig` key plus ``hidden_dim`` (default 256) and
``dropout`` (default 0.1), and MedMIX's own settings (:data:`MEDMIX_PARAMS`, keys of
``method_params.medmix`` and of its variants; their defaults are declared there only).
``distill_max: 0`` (or a committee without teachers) trains without distillation. Teachers are only read in
:meth:`MedMIX.fit`; prediction and checkpoints never touch them.

``medmix`` is **the paper's model**: intra-modality routers over residual adapters, per-modality
heads, masked-softmax fusion of the modality logits, ``L = L_task + λ_D · L_distill``
(:data:`PAPER_FORM` are the schema defaults). Every departure below is off in ``medmix`` and is a
named option; the improvements built from them are registered under their own names
(``beyond_paper``: their own rows in every table, marked as beyond the paper):

- ``medmix_stacked`` (:data:`STACKED_FORM`): ``probe_readout`` + ``probe_crossfit`` (5 folds;
  :mod:`medmix.methods.probe_readout`): the fused logits get a linear probe of every expert's
  standardised embedding and presence flag (``linear_probe``'s features and function class),
  frozen at the probe fitted on the training split with its ``C`` chosen on validation; the
  adapters / routers / heads are trained as a **stacked residual** on top of it: each training row
  sees its *out-of-fold* probe (5 patient-grouped folds at the same ``C``), because the full probe
  nearly interpolates the training split (IU X-ray dev: training log-loss 0.005) and leaves the
  network no error to learn from. Most of its logit is the probe (issue 27), which is why it is
  not the MedMIX row. ``probe_crossfit: 0`` trains the read-out instead (``probe_lr_mult``,
  ``probe_wd_mult``, ``probe_l2``, ``probe_init``).
- ``modality_loss_weight`` (λ_M, default 0 = the paper's objective, a :class:`MedMIXSettings` key):
  ``L = L_task + λ_M · L_modality + λ_D · L_distill`` with ``L_modality`` the mean over
  modalities of each modality head's own task loss where the modality is present.
- ``fusion_warmup_epochs`` (default 0 = the paper; ``medmix_stacked``: 10): uniform fusion weights
  over the present modalities for that many epochs, then a linear ramp to the learned ones
  (:func:`fusion_mix`, stored in the model's ``fusion_mix`` buffer).
- ``linear_readout`` (a :class:`~medmix.models.medmix.MedMIXConfig` field; default false; used
  only without ``probe_readout``): a linear read-out of every present expert added to its
  modality's logits.

Train-time protocols: every model fitted before the training loop (the probe, the fold probes,
``best_single``'s per-expert probes) sees what the protocol leaves of the training rows
(:func:`medmix.protocols.prefit_view`); the network sees the trainer's per-epoch draws.

``early_stopping`` (a :class:`TrainConfig` key shared by every neural method; default
``val_loss``, the paper's) can stop and checkpoint on the validation macro AUROC / AUPRC instead.

**Router ablations** (paper Table E7, ``router`` param): ``learned`` (default, the paper's
intra-modality MoE); ``uniform`` — the mean over the present experts of each modality instead of
the router; ``best_single`` — each modality keeps one committee expert alone, the one whose
linear probe (:mod:`medmix.methods.linear_probe` on that expert's embedding and presence flag,
its ``C`` chosen on validation from :data:`SELECTION_C_GRID`) has the lowest **validation**
log-loss; the paper does not say how it picked the best expert, and a probe per expert is the
affordable proxy for a MedMIX run per expert. The choice is stored in the checkpoint (``selected``) and the predictions
read only those experts; a sample whose chosen expert is absent has that modality absent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.base import FusionMethod, Prediction
from medmix.methods.probe_readout import (
    PROBE_PARAMS,
    ProbeSettings,
    crossfit_folds,
    fit_fold_probes,
    fit_reference_probe,
    known_targets,
    l2_penalty,
)
from medmix.models.losses import modality_task_loss, task_loss, to_probabilities
from medmix.models.medmix import MedMIXConfig, MedMIXNet, ProbeReadout, TeacherHeads
from medmix.protocols import Protocol, prefit_view
from medmix.training.distill import TeacherDistances, distill_loss, distill_weight
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

#: MedMIX's own settings (JSON-schema properties, checked with the config and listed in
#: docs/configuration.md under ``method_params.medmix``): the routers' rate, the distillation, the
#: departures from the paper and the probe read-out. Their defaults are declared here only.
MEDMIX_PARAMS: dict[str, dict[str, Any]] = {
    "router_lr_mult": {"type": "number", "exclusiveMinimum": 0, "default": 0.3,
                       "description": "the routers' learning rate is router_lr_mult x lr"},
    "distill_max": {"type": "number", "minimum": 0, "default": 0.3,
                    "description": "MedMIX distillation weight lambda_D after the ramp (0: no distillation)"},
    "distill_ramp_epochs": {"type": "integer", "minimum": 0, "default": 30,
                            "description": "epochs over which lambda_D ramps linearly from 0 to "
                                           "distill_max (0: constant)"},
    "rkd_weight": {"type": "number", "minimum": 0, "default": 0.05, "description": (
        "weight of the relational (distance-wise RKD) term added to the cosine distillation loss, per modality "
        "with a teacher")},
    "modality_loss_weight": {"type": "number", "minimum": 0, "default": 0.0, "description": (
        "MedMIX, not in the paper: weight of each modality head's own task loss (0 = the paper)")},
    "fusion_warmup_epochs": {"type": "integer", "minimum": 0, "default": 0, "description": (
        "MedMIX, not in the paper: epochs of uniform fusion, then a ramp to the learned weights (0 = the paper)")},
    "linear_readout": {"type": "boolean", "default": False, "description": (
        "MedMIX, not in the paper: a linear read-out of every expert added to its modality's logits "
        "(false = the paper)")},
    **PROBE_PARAMS,
}
#: Their defaults: the paper's MedMIX (Appendix C; every departure off).
MEDMIX_DEFAULTS: dict[str, Any] = {key: spec["default"] for key, spec in MEDMIX_PARAMS.items()}
#: The settings of the paper's MedMIX: every departure off (the defaults; ``medmix``).
PAPER_FORM = {"linear_readout": False, "fusion_warmup_epochs": 0, "modality_loss_weight": 0.0,
              "probe_readout": False}
#: ``medmix_stacked`` (beyond the paper): the stacked linear-probe read-out with 5 cross-fitting
#: folds and 10 epochs of uniform fusion before the learned weights.
STACKED_FORM = {"probe_readout": True, "probe_crossfit": 5, "fusion_warmup_epochs": 10}
#: ``medmix_readout`` (beyond the paper): the read-out trained end to end from zero, its L2 inverse
#: strength ``C`` chosen per seed on validation from a declared grid (:mod:`.probe_readout`).
READOUT_FORM = {"probe_readout": True, "probe_init": False, "probe_crossfit": 0, "probe_l2": True,
                "probe_c_grid": [0.01, 0.1, 1.0]}


@dataclass(frozen=True)
class MedMIXSettings:
    """MedMIX's own training settings (:data:`MEDMIX_PARAMS`; the probe's: :class:`ProbeSettings`)."""

    router_lr_mult: float
    distill_max: float
    distill_ramp_epochs: int
    rkd_weight: float
    #: NOT in the paper: weight of the per-modality head loss.
    modality_loss_weight: float
    #: NOT in the paper: epochs of uniform fusion weights, then as many epochs of a linear ramp to
    #: the learned weights (0 = the paper: learned from the start).
    fusion_warmup_epochs: int

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> MedMIXSettings:
        """This class's keys of a run's params over :data:`MEDMIX_DEFAULTS` (other keys are ignored)."""
        p = {**MEDMIX_DEFAULTS, **params}
        out = cls(float(p["router_lr_mult"]), float(p["distill_max"]), int(p["distill_ramp_epochs"]),
                  float(p["rkd_weight"]), float(p["modality_loss_weight"]), int(p["fusion_warmup_epochs"]))
        if out.modality_loss_weight < 0:
            raise ValueError(f"modality_loss_weight must be >= 0, got {out.modality_loss_weight}")
        if out.fusion_warmup_epochs < 0:
            raise ValueError(f"fusion_warmup_epochs must be >= 0, got {out.fusion_warmup_epochs}")
        return out


class MedMIXObjective:
    """``L = L_task + λ_M · L_modality + λ_D(epoch) · L_distill`` (paper eq. 4 plus ``λ_M · L_modality``).

    ``L_modality`` (:func:`~medmix.models.losses.modality_task_loss`) is the mean over modalities
    of each modality head's own task loss on the samples where the modality is present;
    ``λ_M = modality_loss_weight`` (default 0, the paper's objective). With ``probe_crossfit`` the
    training rows' fused logits carry their out-of-fold probe instead of the full one
    (:func:`out_of_fold_logits`). See the module docstring for why.
    """

    def __init__(self, task: str, settings: MedMIXSettings, probe_l2: float = 0.0,
                 fold_readouts: Sequence[ProbeReadout] = (), folds: torch.Tensor | None = None):
        self.task = task
        self.settings = settings
        #: λ of the ``probe_readout`` L2 term (0: none; see :mod:`medmix.methods.probe_readout`).
        self.probe_l2 = float(probe_l2)
        #: ``probe_crossfit``: the out-of-fold probes, one per fold, and the fold of each training
        #: row (long ``[N]``, on the training device), read at the batch's ``rows``.
        self.fold_readouts = list(fold_readouts)
        self.folds = folds
        #: The teachers' RKD distances over the training split while training (see :meth:`training_split`).
        self.teacher_distances: TeacherDistances | None = None

    def training_split(self, train: Batch | None) -> None:
        """The trainer's hook: the whole training split before the first step, None after the last.
        Computes the teachers' side of the RKD term once (:class:`TeacherDistances`)."""
        s = self.settings
        use = train is not None and s.rkd_weight > 0 and s.distill_max > 0
        self.teacher_distances = TeacherDistances.build(train.teacher) if use else None

    def loss(self, member: Member, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        member.model.fusion_mix.fill_(fusion_mix(epoch, self.settings.fusion_warmup_epochs))
        out = member.model(batch.x, batch.mask)
        logits = out.logits
        if self.fold_readouts and self.folds is not None and member.model.probe is not None:
            # Stacking: each training row sees its out-of-fold probe instead of the full (frozen) one.
            logits = logits - member.model.probe(batch.x, batch.mask) + out_of_fold_logits(
                self.fold_readouts, batch.x, batch.mask, self.folds.index_select(0, batch.rows))
        loss = task_loss(logits, batch.y, self.task)
        parts = {"task_loss": loss.detach()}
        if self.settings.modality_loss_weight > 0:
            modality = modality_task_loss(out.modality_logits, batch.y, out.present, self.task)
            loss = loss + self.settings.modality_loss_weight * modality
            parts["modality_loss"] = modality.detach()
        if self.probe_l2 > 0 and member.model.probe is not None:
            penalty = l2_penalty(member.model.probe.penalised(), self.probe_l2)
            loss = loss + penalty
            parts["probe_l2"] = penalty.detach()
        weight = distill_weight(epoch, self.settings.distill_max, self.settings.distill_ramp_epochs)
        if member.aux is not None and weight > 0:
            modalities = member.model.modalities
            available = {
                m: out.present[:, modalities.index(m)] & batch.teacher_mask[m]
                for m in member.aux.heads if m in batch.teacher
            }
            projected = member.aux(batch.teacher, available)
            known = None
            if self.teacher_distances is not None and batch.rows is not None:
                known = {m: self.teacher_distances.block(m, batch.rows) for m in projected}
            distill = distill_loss(out.z, projected, batch.teacher, available, self.settings.rkd_weight, known)
            loss = loss + weight * distill
            parts["distill_loss"] = distill.detach()
        parts["distill_weight"] = torch.tensor(weight)
        return loss, parts

    def val_loss(self, model: MedMIXNet, batch: Batch) -> torch.Tensor:
        return task_loss(self.val_logits(model, batch), batch.y, self.task)

    def val_logits(self, model: MedMIXNet, batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask).logits

    def diagnostics(self, model: MedMIXNet, batch: Batch) -> dict[str, float]:
        """Per-epoch routing statistics on the validation split (columns of :meth:`MedMIX.curves`)."""
        return routing_diagnostics(model, model(batch.x, batch.mask), batch.mask)

    def validate(self, model: MedMIXNet, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """:meth:`val_loss` and :meth:`diagnostics` from one forward."""
        out = model(batch.x, batch.mask)
        return task_loss(out.logits, batch.y, self.task), routing_diagnostics(model, out, batch.mask)


def out_of_fold_logits(readouts: Sequence[ProbeReadout], x: dict[str, list[torch.Tensor]],
                       mask: dict[str, torch.Tensor], fold: torch.Tensor) -> torch.Tensor:
    """Row ``i``'s logits from ``readouts[fold[i]]`` (every fold's probe on the batch, then a gather)."""
    per_fold = torch.stack([r(x, mask) for r in readouts])  # [K, B, C]
    index = fold.long().view(1, -1, 1).expand(1, -1, per_fold.shape[2])
    return per_fold.gather(0, index).squeeze(0)


def fusion_mix(epoch: int, warmup_epochs: int) -> float:
    """Share of the learned fusion weights at ``epoch``: 0 for the first ``warmup_epochs`` epochs
    (uniform fusion), then a linear ramp to 1 over as many epochs; always 1 without a warm-up."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, max(0.0, (epoch - warmup_epochs) / warmup_epochs))


def _normalised_entropy(weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Per row ``H(w) / ln(#present)`` (1 = uniform over the present entries, 0 = one entry); NaN
    for rows with fewer than two present entries."""
    w = weights.float().clamp_min(1e-12)
    h = -(weights.float() * w.log()).sum(-1)
    k = present.float().sum(-1)
    return torch.where(k >= 2, h / k.clamp_min(2).log(), torch.nan)


def routing_diagnostics(model: MedMIXNet, out, mask: dict[str, torch.Tensor]) -> dict[str, float]:
    """Router and fusion statistics over a batch (normally the whole validation split).

    - ``router_entropy:<m>``: mean normalised entropy of the expert gates of modality ``m`` over
      samples with at least two of its experts present (1 = uniform, 0 = collapsed on one expert);
    - ``gate:<m>:<expert>``: mean gate of each expert over samples where ``m`` is present;
    - ``fusion_entropy``: the same normalised entropy for the modality (fusion) weights over
      samples with at least two modalities present;
    - ``fusion:<m>``: mean fusion weight of ``m`` over samples where ``m`` is present.
    """
    stats: dict[str, float] = {}
    config = model.config
    for m in config.modalities:
        mk = mask[m].bool()
        gates = out.router[m].float()
        stats[f"router_entropy:{m}"] = float(torch.nanmean(_normalised_entropy(gates, mk)))
        rows = mk.any(1)
        names = config.expert_names.get(m) or [str(k) for k in range(gates.shape[1])]
        for k, name in enumerate(names):
            stats[f"gate:{m}:{name}"] = float(gates[rows, k].mean()) if rows.any() else float("nan")
    fusion = out.fusion.float()
    stats["fusion_entropy"] = float(torch.nanmean(_normalised_entropy(fusion, out.present)))
    for j, m in enumerate(config.modalities):
        rows = out.present[:, j]
        stats[f"fusion:{m}"] = float(fusion[rows, j].mean()) if rows.any() else float("nan")
    return stats


def model_config(data: TensorData, params: dict[str, Any]) -> MedMIXConfig:
    """The network's config; ``probe_readout`` replaces (turns off) ``linear_readout``."""
    probe = ProbeSettings.from_params(params).enabled
    return MedMIXConfig(
        dims=data.dims(),
        n_out=len(data.labels),
        task=data.task,
        hidden_dim=int(params.get("hidden_dim", 256)),
        dropout=float(params.get("dropout", 0.1)),
        expert_names={m: list(v) for m, v in data.expert_names.items()},
        labels=list(data.labels),
        linear_readout=bool(params.get("linear_readout", False)) and not probe,
        router="learned" if params.get("router", "learned") == "learned" else "uniform",
        probe_readout=probe,
    )


#: The ``router`` options of the method (``best_single`` runs the model with one expert per modality).
ROUTER_OPTIONS = ("learned", "uniform", "best_single")
#: The probe's ``C`` grid when choosing the best single expert (a coarse grid: a choice among experts, not a model).
SELECTION_C_GRID = (0.01, 0.1, 1.0)


def best_single_experts(train: TensorData, val: TensorData) -> dict[str, int]:
    """Per modality the committee expert whose linear probe has the lowest validation log-loss."""
    from medmix.methods.linear_probe import LinearProbe

    chosen = {}
    for m, xs in train.x.items():
        losses = []
        for k in range(len(xs)):
            probe = LinearProbe({"lp_c_grid": SELECTION_C_GRID})
            probe.fit(restrict(train, {m: k}, [m]), restrict(val, {m: k}, [m]), [0], Protocol("none"))
            losses.append(float(probe.curves()["val_loss"].min()))
        chosen[m] = int(np.argmin(losses))
    return chosen


def restrict(data: TensorData, selected: dict[str, int], modalities: Sequence[str] | None = None) -> TensorData:
    """``data`` with only expert ``selected[m]`` of each modality (of ``modalities``, default all)."""
    mods = list(modalities) if modalities is not None else list(data.x)
    return replace(
        data,
        x={m: [data.x[m][selected[m]]] for m in mods},
        mask={m: data.mask[m][:, selected[m] : selected[m] + 1] for m in mods},
        expert_names={m: [data.expert_names[m][selected[m]]] for m in mods if m in data.expert_names},
        expert_roles={m: [data.expert_roles[m][selected[m]]] for m in mods if m in data.expert_roles},
        teacher={m: t for m, t in data.teacher.items() if m in mods},
        teacher_mask={m: t for m, t in data.teacher_mask.items() if m in mods},
    )


def build_members(
    config: MedMIXConfig, teacher_dims: dict[str, int], seeds: Sequence[int], router_lr_mult: float,
    probe: ProbeSettings | None = None,
) -> list[Member]:
    """One freshly initialised model (and teacher heads if ``teacher_dims``) per seed; the
    intra-modality routers form their own parameter group at ``router_lr_mult`` × the base rate,
    and the ``probe_readout`` parameters (if any) one at ``probe.lr_mult`` × the rate and
    ``probe.wd_mult`` × the weight decay."""
    probe = probe or ProbeSettings()

    def build():
        model = MedMIXNet(config)
        return model, (TeacherHeads(teacher_dims, config.hidden_dim) if teacher_dims else None)

    members = []
    for seed in seeds:
        model, heads = seeded_init(int(seed), build)
        own = {id(p) for p in model.router_parameters() + model.probe_parameters()}
        rest = [p for p in model.parameters() if id(p) not in own]
        if heads is not None:
            rest += list(heads.parameters())
        groups = [(rest, 1.0), (model.router_parameters(), router_lr_mult)]
        if model.probe_parameters() and probe.trains_readout:
            groups.append((model.probe_parameters(), probe.lr_mult, probe.wd_mult))
        else:  # frozen at the reference probe (probe_crossfit)
            for p in model.probe_parameters():
                p.requires_grad_(False)
        members.append(Member(int(seed), model, heads, groups))
    return members


@register_method("medmix")
class MedMIX(FusionMethod):
    """MedMIX (intra-modality MoE + masked logit fusion + training-only distillation)."""

    extra_params = ("router", "lp_c_grid")
    param_schema = MEDMIX_PARAMS
    param_defaults = MEDMIX_DEFAULTS

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Config-time check of the ``probe_readout`` settings (raises ``ValueError`` naming the key)."""
        MedMIXSettings.from_params(params)
        ProbeSettings.from_params(params)

    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        self.train_config = TrainConfig.from_params(self.params)
        self.settings = MedMIXSettings.from_params(self.params)
        self.probe_settings = ProbeSettings.from_params(self.params)
        self.router = str(self.params.get("router", "learned"))
        if self.router not in ROUTER_OPTIONS:
            raise ValueError(f"{self.name}: router must be one of {ROUTER_OPTIONS}, got {self.router!r}")
        self.selected: dict[str, int] | None = None
        self.models: list[MedMIXNet] = []
        self._curves = pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    def view(self, data: TensorData) -> TensorData:
        """The experts the model reads: all, or the chosen one per modality (``router: best_single``)."""
        return data if self.selected is None else restrict(data, self.selected)

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        prefit = prefit_view(train, protocol)  # what the train protocol leaves: every pre-fit reads this
        if self.router == "best_single":
            self.selected = best_single_experts(prefit, val)
            train, val, prefit = self.view(train), self.view(val), self.view(prefit)
        ps = self.probe_settings
        if not ps.c_grid:
            self._fit_once(train, val, prefit, seeds, protocol)
            return
        # probe_c_grid: the read-out's L2 chosen per seed on validation, every point from the same init.
        k = max(1, known_targets(train))
        sign = 1.0 if self.train_config.early_stopping == "val_loss" else -1.0
        best: dict[int, tuple[float, float, MedMIXNet, dict[str, Any]]] = {}
        curves = []
        for c in ps.c_grid:
            self._fit_once(train, val, prefit, seeds, protocol, readout_l2=1.0 / (c * k))
            curves.append(self._curves.assign(grid_probe_c=c))
            for model, entry in zip(self.models, self.selection, strict=True):
                score = sign * float(entry["value"])  # lower is better
                if entry["seed"] not in best or score < best[entry["seed"]][0]:
                    best[entry["seed"]] = (score, c, model, entry)
        self.models = [best[s][2] for s in self.seeds]
        self.selection = [{**best[s][3], "probe_C": best[s][1], "probe_c_grid": list(ps.c_grid)} for s in self.seeds]
        merged = pd.concat(curves, ignore_index=True)
        chosen = merged.grid_probe_c == merged.seed.map({s: best[s][1] for s in self.seeds})
        self._curves = merged.assign(selected=merged.get("selected", True) & chosen)

    def _fit_once(self, train: TensorData, val: TensorData, prefit: TensorData, seeds: Sequence[int],
                  protocol: Protocol, readout_l2: float | None = None) -> None:
        """One ensemble fit; ``readout_l2``: the read-out's L2 weight (else the reference probe's)."""
        config = model_config(train, self.params)
        teacher_dims = {m: d for m, d in train.teacher_dims().items() if m in config.dims}
        distill = self.settings.distill_max > 0 and bool(teacher_dims)
        ps = self.probe_settings
        members = build_members(config, teacher_dims if distill else {}, seeds, self.settings.router_lr_mult, ps)
        probe = fit_reference_probe(prefit, val, self.params) if ps.needs_probe else None
        if probe is not None and ps.init:
            for member in members:
                member.model.probe.load_probe(probe.coef, probe.intercept)
        l2 = probe.l2 if probe is not None and ps.l2 and ps.trains_readout else 0.0
        if readout_l2 is not None:
            l2 = readout_l2
        fold_readouts, fold_of_row = [], None
        if probe is not None and ps.crossfit:
            folds = crossfit_folds(train, ps.crossfit)
            device, _ = resolve_runtime(self.train_config)
            for fold_probe in fit_fold_probes(prefit, val, folds, probe.c):
                readout = ProbeReadout(config.dims, config.n_out)
                readout.load_probe(fold_probe.coef, fold_probe.intercept)
                fold_readouts.append(readout.requires_grad_(False).to(device))
            fold_of_row = torch.from_numpy(folds).to(device)  # read at each training batch's rows
        objective = MedMIXObjective(train.task, self.settings, l2, fold_readouts, fold_of_row)
        trainer = EnsembleTrainer(self.train_config, objective)
        self._curves = trainer.fit(members, train, val, protocol, config.modalities)
        self.selection = trainer.selection
        if probe is not None:  # the probe's validation-chosen C, next to the trainer's choices
            self.selection = [{**entry, "probe_C": probe.c} for entry in self.selection]
        self.models = [m.model for m in members]
        self.seeds = [m.seed for m in members]

    def predict(self, data: TensorData) -> Prediction:
        if not self.models:
            raise RuntimeError("MedMIX.predict called before fit (or load_method)")
        with cpu_threads(self.train_config.threads), torch.no_grad():
            return self._predict(self.view(data))

    def _predict(self, data: TensorData) -> Prediction:
        device, dtype = resolve_runtime(self.train_config)
        config = self.models[0].config
        chunk = self.train_config.eval_batch_size
        probs, routers, fusions, probes = [], {m: [] for m in config.modalities}, [], []
        for model in self.models:
            model.eval()
            p_parts, r_parts, f_parts, q_parts = [], {m: [] for m in config.modalities}, [], []
            for lo in range(0, data.n, chunk):
                hi = min(data.n, lo + chunk)
                x = {m: [t[lo:hi].to(device, dtype or torch.float32) for t in data.x[m]] for m in config.modalities}
                mask = {m: data.mask[m][lo:hi].to(device) for m in config.modalities}
                with autocast(device, dtype):
                    out = model(x, mask)
                p_parts.append(to_probabilities(out.logits, config.task).cpu())
                f_parts.append(out.fusion.float().cpu())
                if model.probe is not None:  # the read-out's per-modality logit terms, mean over outputs
                    q_parts.append(model.probe.per_modality(x, mask).mean(-1).cpu())
                for m in config.modalities:
                    r_parts[m].append(out.router[m].float().cpu())
            probs.append(torch.cat(p_parts) if p_parts else torch.zeros(0, config.n_out))
            fusions.append(torch.cat(f_parts) if f_parts else torch.zeros(0, len(config.modalities)))
            if model.probe is not None:
                probes.append(torch.cat(q_parts) if q_parts else torch.zeros(0, len(config.modalities)))
            for m in config.modalities:
                routers[m].append(torch.cat(r_parts[m]) if r_parts[m] else torch.zeros(0, len(config.dims[m])))
        extras = {f"router:{m}": torch.stack(v).numpy() for m, v in routers.items()}
        extras["fusion"] = torch.stack(fusions).numpy()
        columns = {
            f"router:{m}": list(config.expert_names.get(m) or [str(k) for k in range(len(config.dims[m]))])
            for m in config.modalities
        }
        columns["fusion"] = list(config.modalities)
        if probes:  # probe_readout: the other path from each modality to the logit (contribution table)
            extras["probe"] = torch.stack(probes).numpy()
            columns["probe"] = list(config.modalities)
        return Prediction(np.ascontiguousarray(torch.stack(probs).numpy()), extras, columns)

    def curves(self) -> pd.DataFrame:
        return self._curves

    def export(self) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
        """The deployable networks only: teacher heads are training-time and never saved."""
        if not self.models:
            raise RuntimeError("MedMIX.export called before fit")
        states = [{k: v.detach().to("cpu", torch.float32) for k, v in m.state_dict().items()} for m in self.models]
        settings = {"config": json.loads(self.models[0].config.to_json())}
        if self.selected is not None:
            settings["selected"] = dict(self.selected)
        return settings, states

    def restore(self, settings: dict[str, Any], states: list[dict[str, torch.Tensor]]) -> None:
        device, _ = resolve_runtime(self.train_config)
        config = MedMIXConfig.from_json(json.dumps(settings["config"]))
        self.selected = {m: int(k) for m, k in settings["selected"].items()} if "selected" in settings else None
        self.models = []
        for state in states:
            model = MedMIXNet(config)
            model.load_state_dict(state)
            self.models.append(model.to(device).eval())


@register_method("medmix_stacked")
class MedMIXStacked(MedMIX):
    """Beyond the paper: MedMIX with the stacked linear-probe read-out (:data:`STACKED_FORM`; the
    ``probe_*`` keys of ``method_params.medmix_stacked`` tune it). Its own row in every table."""

    param_defaults = {**MEDMIX_DEFAULTS, **STACKED_FORM}
    beyond_paper = True


@register_method("medmix_readout")
class MedMIXReadout(MedMIX):
    """Beyond the paper: MedMIX with a linear read-out of every expert and presence flag trained end to
    end inside the network (:data:`READOUT_FORM`: from zero, its L2 strength chosen per seed on
    validation from ``probe_c_grid``; no externally fitted model). Its own row in every table."""

    param_defaults = {**MEDMIX_DEFAULTS, **READOUT_FORM}
    beyond_paper = True


@register_method("medmix_nodistill")
class MedMIXNoDistill(MedMIX):
    """Ablation: MedMIX without teacher distillation (λ_D = 0; teachers are never read)."""

    def __init__(self, params: dict[str, Any]):
        super().__init__({**params, "distill_max": 0.0})

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        super().fit(replace(train, teacher={}, teacher_mask={}), replace(val, teacher={}, teacher_mask={}), seeds,
                    protocol)
