"""``linear_probe``: logistic regression on the concatenated cached embeddings (a reference method).

Features: for every modality and expert, in the committee's order, the expert's embedding as the
method receives it (the fit job standardises every expert on the training split; absent rows
are exactly 0, i.e. the training mean), followed by one 0/1 presence flag per expert. So a
missing expert contributes nothing but its flag.

Model: scikit-learn ``LogisticRegression`` (L2, ``lbfgs``, ``max_iter`` 5000, intercept), one
per label for ``multilabel`` / ``binary`` / ``multitask`` tasks (a label's unknown (NaN) rows
are skipped for that label only) and one multinomial model for ``multiclass`` (rows with an
unknown class skipped). A label with a single class in training gets a constant model at its
training prevalence.

Regularisation: the inverse strength ``C`` is chosen from the declared grid
:data:`C_GRID` = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10) (``lp_c_grid`` overrides),
one ``C`` shared by every label, as the value with the lowest **validation** log-loss
averaged over labels (the same criterion the neural methods' early stopping uses), with ties to
the smaller ``C``. The chosen models are those fitted on the training split only; the
validation split is used for the choice and nothing else, the test split never.

Train-time protocols: the probe is fitted on what the protocol leaves of the training rows —
one seeded draw of it (:func:`medmix.protocols.prefit_view`: removed experts read as absent,
embedding 0 and flag 0), so a modality the protocol removes is never learned from; with ``p < 1``
the probe learns from the kept rows and the presence flags absorb the removal.

Seeds: ``lbfgs`` on a fixed problem is deterministic and nothing here is random, so every seed
gives the same model; :meth:`fit` trains it once and every seed's checkpoint holds a copy (the
std over seeds is 0 by construction).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.base import FusionMethod, Prediction
from medmix.protocols import Protocol, prefit_view

#: The declared grid of inverse regularisation strengths (chosen on validation only).
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_ITER = 5000


def probe_features(data: TensorData, dims: dict[str, list[int]] | None = None) -> np.ndarray:
    """``[N, Σ d_k + K]``: every expert's embedding (0 where absent) then one presence flag per expert."""
    dims = dims or data.dims()
    blocks, flags = [], []
    for m, ds in dims.items():
        if m not in data.x:
            raise KeyError(f"linear_probe: input lacks modality {m!r}; model modalities: {list(dims)}")
        got = [int(t.shape[1]) for t in data.x[m]]
        if got != list(ds):
            raise ValueError(f"linear_probe: modality {m!r} has expert dims {got}, model expects {list(ds)}")
        for k, t in enumerate(data.x[m]):
            present = data.mask[m][:, k].bool()
            blocks.append(torch.where(present[:, None], t.float(), 0.0).numpy())
            flags.append(present.numpy().astype(np.float32)[:, None])
    return np.ascontiguousarray(np.concatenate(blocks + flags, axis=1), dtype=np.float64)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def linear_cost(n_in: int, n_out: int) -> dict[str, Any]:
    """A linear read-out: ``D·C`` weights + ``C`` biases; ``2·D·C`` FLOPs per sample."""
    return {"params": n_in * n_out + n_out, "flops_per_sample": float(2 * n_in * n_out), "flops_kind": "flops"}


@register_method("linear_probe")
class LinearProbe(FusionMethod):
    """Per-label L2 logistic regression on concatenated standardised embeddings + presence flags."""

    extra_params = ("lp_c_grid",)
    numpy_predict = True

    def __init__(self, params: dict[str, Any]):
        super().__init__(params)
        self.c_grid = tuple(float(c) for c in self.params.get("lp_c_grid", C_GRID))
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ValueError(f"linear_probe: lp_c_grid must be positive numbers, got {self.c_grid}")
        self.coef: np.ndarray | None = None  # [C_out, D]
        self.intercept: np.ndarray | None = None  # [C_out]
        self.settings: dict[str, Any] = {}
        self._curves = pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    # -- fitting ---------------------------------------------------------------------------
    def _fit_binary(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import LogisticRegression

        if y.size == 0 or y.min() == y.max():
            prev = float(np.clip(y.mean() if y.size else 0.5, 1e-4, 1 - 1e-4))
            return np.zeros(x.shape[1]), float(np.log(prev / (1 - prev)))
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, y)
        return model.coef_[0].copy(), float(model.intercept_[0])

    def _fit_multiclass(self, x: np.ndarray, y: np.ndarray, c: float, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.linear_model import LogisticRegression

        known = ~np.isnan(y).any(1)
        cls = y[known].argmax(1)
        coef, intercept = np.zeros((n_out, x.shape[1])), np.full(n_out, -30.0)
        seen = np.unique(cls)
        if seen.size < 2:
            intercept[seen] = 0.0
            return coef, intercept
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x[known], cls)
        coef[model.classes_] = (model.coef_ if model.coef_.shape[0] == seen.size
                                else np.stack([-model.coef_[0], model.coef_[0]]))
        intercept[model.classes_] = (
            model.intercept_ if model.intercept_.shape[0] == seen.size
            else np.array([-model.intercept_[0], model.intercept_[0]])
        )
        return coef, intercept

    def _fit_all(self, x: np.ndarray, y: np.ndarray, task: str, c: float) -> tuple[np.ndarray, np.ndarray]:
        n_out = y.shape[1]
        if task == "multiclass":
            return self._fit_multiclass(x, y, c, n_out)
        coef, intercept = np.zeros((n_out, x.shape[1])), np.zeros(n_out)
        for j in range(n_out):
            known = ~np.isnan(y[:, j])
            coef[j], intercept[j] = self._fit_binary(x[known], y[known, j], c)
        return coef, intercept

    def _val_loss(self, x: np.ndarray, y: np.ndarray, task: str, coef: np.ndarray, intercept: np.ndarray) -> float:
        logits = x @ coef.T + intercept
        if task == "multiclass":
            known = ~np.isnan(y).any(1)
            z = logits[known] - logits[known].max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            return float(-logp[np.arange(known.sum()), y[known].argmax(1)].mean()) if known.any() else 0.0
        losses = []
        for j in range(y.shape[1]):
            known = ~np.isnan(y[:, j])
            if known.any():
                losses.append(_log_loss(y[known, j], _sigmoid(logits[known, j])))
        return float(np.mean(losses)) if losses else 0.0

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        dims = train.dims()
        train = prefit_view(train, protocol)  # the training rows as the train-time protocol leaves them
        xt, xv = probe_features(train, dims), probe_features(val, dims)
        yt, yv = train.y.numpy().astype(np.float64), val.y.numpy().astype(np.float64)
        rows, best = [], None
        for i, c in enumerate(self.c_grid):
            coef, intercept = self._fit_all(xt, yt, train.task, c)
            tl = self._val_loss(xt, yt, train.task, coef, intercept)
            vl = self._val_loss(xv, yv, train.task, coef, intercept)
            rows.append({"c": c, "train_loss": tl, "val_loss": vl, "epoch": i})
            if best is None or vl < best[0] - 1e-12:
                best = (vl, c, coef, intercept)
        assert best is not None
        _, c_best, self.coef, self.intercept = best
        self.seeds = [int(s) for s in seeds]
        self.selection = [{"seed": s, "C": c_best} for s in self.seeds]
        self.settings = {"dims": dims, "task": train.task, "labels": list(train.labels), "c": c_best,
                         "c_grid": list(self.c_grid), "criterion": "mean validation log-loss over labels"}
        self._curves = pd.DataFrame([{"seed": s, **r, "chosen": r["c"] == c_best} for s in self.seeds for r in rows])

    # -- prediction ------------------------------------------------------------------------
    def predict(self, data: TensorData) -> Prediction:
        if self.coef is None or self.intercept is None:
            raise RuntimeError("linear_probe.predict called before fit (or load_method)")
        logits = probe_features(data, self.settings["dims"]) @ self.coef.T + self.intercept
        if self.settings["task"] == "multiclass":
            z = logits - logits.max(1, keepdims=True)
            prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        else:
            prob = _sigmoid(logits)
        prob = prob.astype(np.float32)
        return Prediction(np.ascontiguousarray(np.stack([prob] * len(self.seeds))))

    def cost(self, batch: TensorData) -> dict[str, Any]:
        """The coefficients and intercepts; ``2·D·C`` multiply-adds per sample (:func:`linear_cost`)."""
        return {**linear_cost(int(self.coef.shape[1]), int(self.coef.shape[0])),
                "params_note": "coef + intercept elements", "flops_note": "2·D·C multiply-adds per sample (analytic)"}

    def curves(self) -> pd.DataFrame:
        return self._curves

    # -- persistence -----------------------------------------------------------------------
    def export(self) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
        if self.coef is None or self.intercept is None:
            raise RuntimeError("linear_probe.export called before fit")
        state = {"coef": torch.from_numpy(self.coef.copy()), "intercept": torch.from_numpy(self.intercept.copy())}
        return dict(self.settings), [{k: v.clone() for k, v in state.items()} for _ in self.seeds]

    def restore(self, settings: dict[str, Any], states: list[dict[str, torch.Tensor]]) -> None:
        self.settings = dict(settings)
        self.settings["dims"] = {m: [int(d) for d in ds] for m, ds in settings["dims"].items()}
        self.coef = states[0]["coef"].double().numpy()
        self.intercept = states[0]["intercept"].double().numpy()
