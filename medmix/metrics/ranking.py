"""Macro AUROC / AUPRC: threshold-free, so the trainer's early stopping can use them without
depending on how the tables define thresholded metrics (:mod:`medmix.metrics.classification`)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def label_ranking(prob: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """AUROC and AUPRC of one binary label (rows with an unknown label dropped); NaN if one class only."""
    known = ~np.isnan(y)
    yc, pc = y[known].astype(int), prob[known]
    if yc.size == 0 or yc.min() == yc.max():
        return float("nan"), float("nan")
    return float(roc_auc_score(yc, pc)), float(average_precision_score(yc, pc))


def macro_ranking(prob: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """Macro AUROC / AUPRC: one-vs-rest over present classes (multiclass) or over labels having both classes."""
    if task == "multiclass":
        known = ~np.isnan(y).any(1)
        truth, p = y[known].argmax(1), prob[known]
        present = np.unique(truth)
        if present.size < 2:
            return {"auroc": float("nan"), "auprc": float("nan")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auroc = roc_auc_score(truth, p, multi_class="ovr", labels=np.arange(p.shape[1]))
            auprc = np.nanmean([average_precision_score(truth == c, p[:, c]) for c in present])
        return {"auroc": float(auroc), "auprc": float(auprc)}
    pairs = [label_ranking(prob[:, c], y[:, c]) for c in range(prob.shape[1])]
    aurocs = [a for a, _ in pairs if a == a]
    auprcs = [b for _, b in pairs if b == b]
    return {"auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
            "auprc": float(np.mean(auprcs)) if auprcs else float("nan")}
