"""MedMIX's ``probe_readout`` option: a linear probe inside the model, trained like the probe.

The read-out (:class:`medmix.models.medmix.ProbeReadout`) adds ``b + F·flags + Σ R_{m,k} e_{m,k}``
to the fused logits, the function class of :mod:`medmix.methods.linear_probe`. Settings (method
params, all inert unless ``probe_readout`` is true; :data:`PROBE_DEFAULTS`; off in the paper's
``medmix``, on in ``medmix_stacked``, an improvement beyond the paper with its own table row):

- ``probe_lr_mult``: the read-out's own parameter group runs at ``probe_lr_mult × lr``;
- ``probe_wd_mult``: its AdamW (decoupled) weight decay is ``probe_wd_mult × weight_decay``
  (default 0: the L2 term below regularises it instead);
- ``probe_l2``: add the probe's own penalty ``λ/2 · ||W||²`` (every read-out weight, not the
  bias) to the loss, with ``λ = 1 / (C · K)``, ``C`` the :class:`~medmix.methods.linear_probe.LinearProbe`'s
  inverse strength chosen on the **validation** split and ``K`` the number of known training
  targets (label entries for sigmoid tasks, rows for multiclass): the mean task loss plus this
  term is the probe's objective divided by ``K``, so the read-out alone has the probe's optimum;
- ``probe_init``: start the read-out from that probe's coefficients (fitted on the training split
  only); otherwise from zero;
- ``probe_c_grid`` (default empty; needs ``probe_init: false``, ``probe_crossfit: 0``): the
  read-out is trained **end to end** from zero with the L2 term ``λ = 1 / (C · K)`` for every ``C``
  of the grid, and per seed the ``C`` with the best validation criterion is kept (each point from
  the same initial weights, with the same budget). No reference probe is fitted: the read-out is
  the network's own. ``medmix_readout`` (beyond the paper) is this form;
- ``probe_crossfit`` (``K``, default 5; 0 = off; needs ``probe_init``): stacked generalisation. The
  read-out is frozen at the reference probe, and while training each training row's read-out
  term is replaced by the **out-of-fold** probe's logits: ``K`` probes at the reference ``C``, each
  fitted on the training patients outside one of ``K`` patient-grouped folds
  (:func:`crossfit_folds`), evaluated on the row's (masked) features. Why: the reference probe
  nearly interpolates the training split (IU X-ray dev: training log-loss 0.005 against 0.075 on
  validation), so the rest of the network, trained on top of it, gets no error signal to learn from;
  out-of-fold logits carry the probe's held-out errors, which the adapters / router / heads can
  then correct. Validation, test and the saved model use the full reference probe.

The probe is fitted once per :meth:`~medmix.methods.medmix.MedMIX.fit` (it is deterministic), on
what the train-time protocol leaves of the training split (:func:`medmix.protocols.prefit_view`:
a modality the protocol removes is never read) and the validation split; the test split is never
read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medmix.data import TensorData
from medmix.protocols import Protocol

#: The option's method params (JSON-schema properties: checked with the config, listed in
#: docs/configuration.md under ``method_params.medmix``); their defaults are declared here only.
PROBE_PARAMS: dict[str, dict[str, Any]] = {
    "probe_readout": {"type": "boolean", "default": False, "description": (
        "MedMIX, not in the paper: a linear probe of every expert and presence flag added to the fused logits "
        "(frozen at the validation-chosen probe with probe_crossfit, else trained in its own parameter group), "
        "replacing linear_readout (false = the paper)")},
    "probe_lr_mult": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                      "description": "MedMIX probe_readout: the read-out's learning rate is probe_lr_mult x lr"},
    "probe_wd_mult": {"type": "number", "minimum": 0, "default": 0.0, "description": (
        "MedMIX probe_readout: the read-out's AdamW weight decay is probe_wd_mult x weight_decay")},
    "probe_l2": {"type": "boolean", "default": True, "description": (
        "MedMIX probe_readout: add the linear probe's L2 penalty, its C chosen on validation "
        "(lp_c_grid), to the loss")},
    "probe_init": {"type": "boolean", "default": True, "description": (
        "MedMIX probe_readout: start the read-out from the validation-chosen linear probe fitted "
        "on the training split")},
    "probe_crossfit": {"type": "integer", "minimum": 0, "default": 5, "description": (
        "MedMIX probe_readout: 0 = off; K >= 2 = freeze the read-out at the reference probe and train the rest of "
        "the network on top of K-fold out-of-fold probe logits (stacking)")},
    "probe_c_grid": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "default": [],
                     "description": (
        "MedMIX probe_readout: inverse L2 strengths of a read-out trained end to end from zero, one chosen per seed "
        "on validation (needs probe_init: false, probe_crossfit: 0); empty = the reference probe's C")},
}
#: The option's method params and their defaults.
PROBE_DEFAULTS: dict[str, Any] = {key: spec["default"] for key, spec in PROBE_PARAMS.items()}
#: Seed of the patient-to-fold assignment of ``probe_crossfit`` (fixed: the folds are part of the method).
CROSSFIT_SEED = 0


@dataclass(frozen=True)
class ProbeSettings:
    enabled: bool = False
    lr_mult: float = 1.0
    wd_mult: float = 0.0
    l2: bool = True
    init: bool = True
    crossfit: int = 0
    #: ``probe_c_grid``: inverse L2 strengths of the trained read-out, one chosen per seed on the
    #: validation criterion (end to end: no reference probe is fitted); empty = the probe's ``C``.
    c_grid: tuple[float, ...] = ()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ProbeSettings:
        p = {**PROBE_DEFAULTS, **{k: v for k, v in params.items() if k in PROBE_DEFAULTS}}
        for key in ("probe_readout", "probe_l2", "probe_init"):
            if not isinstance(p[key], bool):
                raise ValueError(f"medmix: {key} must be true or false, got {p[key]!r}")
        crossfit = p["probe_crossfit"]
        if isinstance(crossfit, bool) or not isinstance(crossfit, int) or crossfit < 0 or crossfit == 1:
            raise ValueError(f"medmix: probe_crossfit must be 0 (off) or a number of folds >= 2, got {crossfit!r}")
        # Inert without the read-out, like every probe_* setting.
        grid = p["probe_c_grid"]
        if not isinstance(grid, (list, tuple)) or any(isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0
                                                     for c in grid):
            raise ValueError(f"medmix: probe_c_grid must be a list of positive numbers, got {grid!r}")
        settings = cls(bool(p["probe_readout"]), float(p["probe_lr_mult"]), float(p["probe_wd_mult"]),
                       p["probe_l2"], p["probe_init"], int(crossfit) if p["probe_readout"] else 0,
                       tuple(float(c) for c in grid) if p["probe_readout"] else ())
        if settings.c_grid and (settings.init or settings.crossfit or not settings.l2):
            raise ValueError("medmix: probe_c_grid trains the read-out end to end with its L2 chosen on validation: "
                             "it needs probe_init: false, probe_crossfit: 0 and probe_l2: true")
        if settings.crossfit and not settings.init:
            raise ValueError("medmix: probe_crossfit freezes the read-out at the reference probe: it needs "
                             "probe_init: true (or probe_crossfit: 0)")
        if not settings.lr_mult > 0:
            raise ValueError(f"medmix: probe_lr_mult must be > 0, got {settings.lr_mult}")
        if not settings.wd_mult >= 0:
            raise ValueError(f"medmix: probe_wd_mult must be >= 0, got {settings.wd_mult}")
        return settings

    @property
    def needs_probe(self) -> bool:
        """Whether a reference probe is fitted (for its coefficients or its ``C``)."""
        return self.enabled and (self.init or (self.l2 and not self.c_grid))

    @property
    def trains_readout(self) -> bool:
        """Whether the read-out is trained (it is frozen at the reference probe with ``probe_crossfit``)."""
        return self.enabled and not self.crossfit


@dataclass(frozen=True)
class ReferenceProbe:
    """The validation-chosen probe: ``coef`` [C, D], ``intercept`` [C], its ``C`` and the L2 weight ``λ``."""

    coef: torch.Tensor
    intercept: torch.Tensor
    c: float
    l2: float


def known_targets(data: TensorData) -> int:
    """``K``: known training targets as the task loss averages them (label entries, or rows for multiclass)."""
    y = data.y
    known = ~torch.isnan(y)
    return int(known.all(1).sum()) if data.task == "multiclass" else int(known.sum())


def fit_reference_probe(train: TensorData, val: TensorData, params: dict[str, Any]) -> ReferenceProbe:
    """Fit :class:`~medmix.methods.linear_probe.LinearProbe` (its ``C`` grid, ``lp_c_grid`` if set)
    on ``train``, ``C`` chosen on ``val``; returns its coefficients and ``λ = 1 / (C · K)``."""
    from medmix.methods.linear_probe import LinearProbe

    probe = LinearProbe({k: v for k, v in params.items() if k == "lp_c_grid"})
    probe.fit(train, val, [0], Protocol("none"))
    assert probe.coef is not None and probe.intercept is not None
    c = float(probe.settings["c"])
    return ReferenceProbe(torch.from_numpy(np.ascontiguousarray(probe.coef)).float(),
                          torch.from_numpy(np.ascontiguousarray(probe.intercept)).float(),
                          c, 1.0 / (c * max(1, known_targets(train))))


def l2_penalty(params: list[torch.nn.Parameter], weight: float) -> torch.Tensor:
    """``weight / 2 · Σ ||p||²`` in float32."""
    return 0.5 * weight * sum(p.float().pow(2).sum() for p in params)


def crossfit_folds(train: TensorData, k: int, seed: int = CROSSFIT_SEED) -> np.ndarray:
    """Fold (0..k-1) of every training row: patients (``train.groups``; each row its own patient if
    unknown) are shuffled with ``seed`` and dealt round-robin, so a patient's rows share a fold."""
    groups = train.groups if train.groups is not None else np.asarray(train.sample_ids)
    patients = np.unique(groups)
    if patients.size < k:
        raise ValueError(f"medmix: probe_crossfit {k} needs at least {k} training patients, got {patients.size}")
    order = np.random.default_rng(seed).permutation(patients.size)
    fold_of = np.empty(patients.size, dtype=np.int64)
    fold_of[order] = np.arange(patients.size) % k
    return fold_of[np.searchsorted(patients, groups)]


def fit_fold_probes(train: TensorData, val: TensorData, folds: np.ndarray, c: float) -> list[ReferenceProbe]:
    """Per fold, the probe at inverse strength ``c`` fitted on the training rows outside that fold."""
    return [fit_reference_probe(train.subset(np.flatnonzero(folds != k)), val, {"lp_c_grid": [c]})
            for k in range(int(folds.max()) + 1)]
