"""MedMIX's ``probe_readout`` option: a linear probe inside the model, trained like the probe.

The read-out (:class:`medmix.models.medmix.ProbeReadout`) adds ``b + F·flags + Σ R_{m,k} e_{m,k}``
to the fused logits, the function class of :mod:`medmix.methods.linear_probe`. Settings (method
params, all off / inert unless ``probe_readout`` is true; :data:`PROBE_DEFAULTS`):

- ``probe_lr_mult``: the read-out's own parameter group runs at ``probe_lr_mult × lr``;
- ``probe_wd_mult``: its AdamW (decoupled) weight decay is ``probe_wd_mult × weight_decay``
  (default 0: the L2 term below regularises it instead);
- ``probe_l2``: add the probe's own penalty ``λ/2 · ||W||²`` (every read-out weight, not the
  bias) to the loss, with ``λ = 1 / (C · K)``, ``C`` the :class:`~medmix.methods.linear_probe.LinearProbe`'s
  inverse strength chosen on the **validation** split and ``K`` the number of known training
  targets (label entries for sigmoid tasks, rows for multiclass): the mean task loss plus this
  term is the probe's objective divided by ``K``, so the read-out alone has the probe's optimum;
- ``probe_init``: start the read-out from that probe's coefficients (fitted on the training split
  only); otherwise from zero.

The probe is fitted once per :meth:`~medmix.methods.medmix.MedMIX.fit` (it is deterministic), on
the same training / validation tensors the network gets; the test split is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medmix.data import TensorData
from medmix.protocols import Protocol

#: The option's method params and their defaults.
PROBE_DEFAULTS: dict[str, Any] = {
    "probe_readout": False, "probe_lr_mult": 1.0, "probe_wd_mult": 0.0, "probe_l2": True, "probe_init": True,
}


@dataclass(frozen=True)
class ProbeSettings:
    enabled: bool = False
    lr_mult: float = 1.0
    wd_mult: float = 0.0
    l2: bool = True
    init: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ProbeSettings:
        p = {**PROBE_DEFAULTS, **{k: v for k, v in params.items() if k in PROBE_DEFAULTS}}
        for key in ("probe_readout", "probe_l2", "probe_init"):
            if not isinstance(p[key], bool):
                raise ValueError(f"medmix: {key} must be true or false, got {p[key]!r}")
        settings = cls(bool(p["probe_readout"]), float(p["probe_lr_mult"]), float(p["probe_wd_mult"]),
                       p["probe_l2"], p["probe_init"])
        if not settings.lr_mult > 0:
            raise ValueError(f"medmix: probe_lr_mult must be > 0, got {settings.lr_mult}")
        if not settings.wd_mult >= 0:
            raise ValueError(f"medmix: probe_wd_mult must be >= 0, got {settings.wd_mult}")
        return settings

    @property
    def needs_probe(self) -> bool:
        return self.enabled and (self.l2 or self.init)


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
