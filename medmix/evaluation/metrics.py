"""AUROC, AUPRC, macro-F1 and accuracy with decision thresholds tuned on validation only."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

METRICS = ("auroc", "auprc", "mf1", "acc")


def tune_thresholds(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-label threshold maximising F1 on the given (validation) predictions; 0.5 if undefined."""
    out = np.full(prob.shape[1], 0.5)
    grid = np.linspace(0.01, 0.99, 99)
    for c in range(prob.shape[1]):
        known = ~np.isnan(y[:, c])
        yc, pc = y[known, c], prob[known, c]
        if yc.size == 0 or yc.min() == yc.max():
            continue
        pred = pc[None, :] >= grid[:, None]
        tp = (pred & (yc == 1)).sum(1)
        fp = (pred & (yc == 0)).sum(1)
        fn = (~pred & (yc == 1)).sum(1)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        out[c] = grid[int(np.argmax(f1))]
    return out


def compute_metrics(prob: np.ndarray, y: np.ndarray, task: str, thresholds: np.ndarray | None = None) -> dict[str, float]:
    """Macro-averaged metrics; labels with a single class in ``y`` are left out of AUROC/AUPRC."""
    if task == "multiclass":
        known = ~np.isnan(y).any(1)
        truth, p = y[known].argmax(1), prob[known]
        pred = p.argmax(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            present = np.unique(truth)
            auroc = roc_auc_score(truth, p, multi_class="ovr", labels=np.arange(p.shape[1])) if present.size > 1 else np.nan
            auprc = np.nanmean([average_precision_score(truth == c, p[:, c]) for c in present]) if present.size > 1 else np.nan
        return {"auroc": float(auroc), "auprc": float(auprc),
                "mf1": float(f1_score(truth, pred, average="macro", labels=present)), "acc": float((pred == truth).mean())}
    thresholds = np.full(prob.shape[1], 0.5) if thresholds is None else thresholds
    aurocs, auprcs, f1s, accs = [], [], [], []
    for c in range(prob.shape[1]):
        known = ~np.isnan(y[:, c])
        yc, pc = y[known, c].astype(int), prob[known, c]
        if yc.size == 0:
            continue
        pred = (pc >= thresholds[c]).astype(int)
        f1s.append(f1_score(yc, pred, zero_division=0))
        accs.append(float((pred == yc).mean()))
        if yc.min() != yc.max():
            aurocs.append(roc_auc_score(yc, pc))
            auprcs.append(average_precision_score(yc, pc))
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"auroc": mean(aurocs), "auprc": mean(auprcs), "mf1": mean(f1s), "acc": mean(accs)}
