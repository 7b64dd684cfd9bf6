"""AUROC, AUPRC, mF1 and accuracy as the MedMIX paper reports them; thresholds tuned on validation only.

mF1 is F1 averaged over the classes: for a binary, multi-label or multi-task outcome, per label
the mean of the positive-class and the negative-class F1 (then the macro mean over labels); for a
multi-class outcome, the macro F1 over classes. The paper's numbers require it: MMIST-ccRCC has
mF1 0.726 at accuracy 0.903 with 88 % positives, impossible for the positive-class F1. A class
absent from a split's labels is left out of that label's mF1, and a label with one class only has
no AUROC/AUPRC (NaN, left out of the macro mean); :func:`split_notes` names such cases.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score

from medmix.metrics.ranking import macro_ranking

METRICS = ("auroc", "auprc", "mf1", "acc")

#: One sentence for under every table.
MF1_DEFINITION = ("mF1 = F1 averaged over both classes per label (positive and negative), then macro over labels "
                  "(multi-class: macro F1 over classes); Acc = accuracy, averaged over labels; AUROC/AUPRC macro "
                  "over labels having both classes; thresholds per label tuned per seed on the clean validation "
                  "split to maximise mF1.")


def _binary_f1s(yc: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of the negative and the positive class at once, for many prediction rows: ``pred`` (k, n)."""
    pos, neg = yc == 1, yc == 0
    tp = (pred & pos).sum(-1)
    fp = (pred & neg).sum(-1)
    fn = (~pred & pos).sum(-1)
    tn = (~pred & neg).sum(-1)
    f1_pos = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    f1_neg = 2 * tn / np.maximum(2 * tn + fn + fp, 1)
    return np.stack([f1_neg, f1_pos], -1)


def auroc_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC per row of (B, n) scores ``p`` / 0-1 labels ``y``; NaN for rows with one class."""
    ranks = stats.rankdata(p, axis=1)
    n1 = y.sum(1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * y).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    out[(n1 == 0) | (n0 == 0)] = np.nan
    return out


def ap_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Average precision per row (scikit-learn's definition: thresholds at distinct scores)."""
    order = np.argsort(-p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, 1)
    ys = np.take_along_axis(y, order, 1)
    tp = np.cumsum(ys, 1)
    k = np.arange(1, p.shape[1] + 1)[None, :]
    last = np.ones_like(ps, dtype=bool)  # the last position of each group of tied scores
    last[:, :-1] = ps[:, 1:] != ps[:, :-1]
    tp_at = np.where(last, tp, 0)
    prev = np.maximum.accumulate(np.concatenate([np.zeros((p.shape[0], 1)), tp_at[:, :-1]], 1), axis=1)
    pos = y.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.where(last, (tp - prev) * tp / k, 0.0)).sum(1) / pos
    out[(pos == 0) | (pos == y.shape[1])] = np.nan
    return out


def binary_mf1(yc: np.ndarray, pred: np.ndarray) -> float:
    """Mean F1 over the classes present in ``yc`` (0/1 ints); NaN when ``yc`` is empty."""
    yc, pred = np.asarray(yc).astype(int), np.asarray(pred).astype(bool)
    present = [c for c in (0, 1) if (yc == c).any()]
    if not present:
        return float("nan")
    return float(_binary_f1s(yc, pred)[present].mean())


def tune_thresholds(prob: np.ndarray, y: np.ndarray, objective: str = "f1") -> np.ndarray:
    """Per-label threshold on the given (validation) predictions; 0.5 where a label has one class.

    ``objective``: ``f1`` maximises the positive-class F1 (CP-IMoE tables), ``mf1`` the F1 averaged over
    both classes (the MedMIX tables, :data:`MF1_DEFINITION`). Ties: the lowest threshold of the grid.
    """
    if objective not in ("f1", "mf1"):
        raise ValueError(f"tune_thresholds: objective must be 'f1' or 'mf1', got {objective!r}")
    out = np.full(prob.shape[1], 0.5)
    grid = np.linspace(0.01, 0.99, 99)
    for c in range(prob.shape[1]):
        known = ~np.isnan(y[:, c])
        yc, pc = y[known, c], prob[known, c]
        if yc.size == 0 or yc.min() == yc.max():
            continue
        f1s = _binary_f1s(yc.astype(int), pc[None, :] >= grid[:, None])
        score = f1s[:, 1] if objective == "f1" else f1s.mean(1)
        out[c] = grid[int(np.argmax(score))]
    return out


def label_metrics(prob: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> list[dict[str, float]]:
    """Per label of a binary / multi-label / multi-task outcome: AUROC, AUPRC, mF1, Acc and ``n`` (known labels)."""
    thresholds = np.full(prob.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, float)
    out = []
    for c in range(prob.shape[1]):
        known = ~np.isnan(y[:, c])
        yc, pc = y[known, c].astype(int), prob[known, c]
        auroc, auprc = (float(auroc_rows(pc[None], yc[None])[0]), float(ap_rows(pc[None], yc[None])[0])) \
            if yc.size else (float("nan"), float("nan"))
        pred = pc >= thresholds[c]
        out.append({"auroc": auroc, "auprc": auprc, "mf1": binary_mf1(yc, pred),
                    "acc": float((pred == yc).mean()) if yc.size else float("nan"), "n": int(yc.size)})
    return out


def compute_metrics(prob: np.ndarray, y: np.ndarray, task: str,
                    thresholds: np.ndarray | None = None) -> dict[str, float]:
    """Macro-averaged AUROC, AUPRC, mF1, Acc (:data:`MF1_DEFINITION`); NaN where no label defines a metric."""
    if task == "multiclass":
        ranking = macro_ranking(prob, y, task)
        known = ~np.isnan(y).any(1)
        truth, pred = y[known].argmax(1), prob[known].argmax(1)
        if truth.size == 0:
            return {**ranking, "mf1": float("nan"), "acc": float("nan")}
        present = np.unique(truth)
        return {**ranking, "mf1": float(f1_score(truth, pred, average="macro", labels=present)),
                "acc": float((pred == truth).mean())}
    per = label_metrics(prob, y, thresholds)
    mean = lambda k: float(np.nanmean(v)) if np.isfinite(v := np.array([p[k] for p in per])).any() else float("nan")  # noqa: E731
    return {"auroc": mean("auroc"), "auprc": mean("auprc"), "mf1": mean("mf1"), "acc": mean("acc")}


def split_notes(y: np.ndarray, task: str, labels: list[str], where: str) -> list[str]:
    """Human-readable notes on classes absent from a split (``where`` names it), e.g. for under a table."""
    notes = []
    if task == "multiclass":
        known = ~np.isnan(y).any(1)
        absent = [labels[c] for c in range(y.shape[1]) if not (y[known, c] == 1).any()]
        if absent:
            notes.append(f"{where}: classes {absent} absent; macro over the present classes only")
        return notes
    for c, name in enumerate(labels):
        yc = y[~np.isnan(y[:, c]), c]
        if yc.size == 0:
            notes.append(f"{where}: label {name!r} has no known value; left out of every metric")
        elif yc.min() == yc.max():
            notes.append(f"{where}: label {name!r} has only class {int(yc[0])}; no AUROC/AUPRC, "
                         "its mF1 averages the present class only")
    return notes
