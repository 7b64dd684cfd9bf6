"""MedMIX against the best other method: a paired test across seeds and a bootstrap CI over test samples.

* Paired test: two-sided paired t-test of the per-seed metric values (same seeds, same test set);
  NaN with fewer than two paired seeds or zero variance of the differences.
* Bootstrap: test samples resampled with replacement (``n_boot`` draws, fixed seed), the *same*
  draws for both methods and every seed; per draw the metric is averaged over seeds and the
  difference MedMIX − other taken; the CI is the 2.5/97.5 % percentile interval.

The metrics per draw are vectorised re-implementations of :mod:`medmix.metrics.classification`
(AUROC by average ranks, AUPRC as scikit-learn's step-wise average precision with tied scores
grouped, mF1 and accuracy at the validation thresholds), equal to them up to float rounding.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats

from medmix.metrics.classification import METRICS, ap_rows, auroc_rows

N_BOOT = 200
BOOT_SEED = 0


def _mf1_acc_rows(pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = y == 1, y == 0
    tp, fp = (pred & pos).sum(1), (pred & neg).sum(1)
    fn, tn = (~pred & pos).sum(1), (~pred & neg).sum(1)
    f1p = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    f1n = 2 * tn / np.maximum(2 * tn + fn + fp, 1)
    has_p, has_n = pos.any(1), neg.any(1)
    with np.errstate(invalid="ignore"):
        mf1 = (f1p * has_p + f1n * has_n) / (has_p.astype(float) + has_n)
    return mf1, (pred == pos).mean(1)


def boot_metrics(prob: np.ndarray, y: np.ndarray, thresholds: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Macro metrics (binary / multi-label / multi-task) of each bootstrap draw ``idx`` (B, n): arrays (B,)."""
    per = {m: [] for m in METRICS}
    for c in range(prob.shape[1]):
        known = ~np.isnan(y[:, c])
        if not known.any():
            continue
        # rows with an unknown label: the label's own draws over its known rows (seeded, so the
        # same for every method and seed)
        sub = np.flatnonzero(known)
        draw = idx if sub.size == idx.shape[1] else \
            np.random.default_rng(BOOT_SEED + 1 + c).choice(sub, size=(idx.shape[0], sub.size))
        pc, yc = prob[draw, c], y[draw, c]
        per["auroc"].append(auroc_rows(pc, yc))
        per["auprc"].append(ap_rows(pc, yc))
        mf1, acc = _mf1_acc_rows(pc >= thresholds[c], yc)
        per["mf1"].append(mf1)
        per["acc"].append(acc)
    with np.errstate(invalid="ignore"), warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        return {m: np.nanmean(np.stack(v), 0) if v else np.full(idx.shape[0], np.nan) for m, v in per.items()}


def paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value of per-seed values ``a`` vs ``b`` (NaN if undefined)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    if d.size < 2 or np.allclose(d, d[0]):
        return float("nan")
    return float(stats.ttest_rel(a[ok], b[ok]).pvalue)


def bootstrap_diff(runs_a: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   runs_b: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   n_boot: int = N_BOOT) -> dict[str, tuple[float, float]]:
    """95 % percentile CI of (mean over seeds of A) − (mean over seeds of B), per metric.

    Each run is a list over seeds of ``(prob, y, thresholds)`` on the same test samples in the same
    order (A and B aligned by sample id beforehand).
    """
    n = runs_a[0][1].shape[0]
    idx = np.random.default_rng(BOOT_SEED).integers(0, n, size=(n_boot, n))

    def seed_mean(runs):
        draws = [boot_metrics(p, y, t, idx) for p, y, t in runs]
        return {m: np.nanmean(np.stack([d[m] for d in draws]), 0) for m in METRICS}

    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        a, b = seed_mean(runs_a), seed_mean(runs_b)
        out = {}
        for m in METRICS:
            d = a[m] - b[m]
            d = d[np.isfinite(d)]
            out[m] = (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))) if d.size else (np.nan, np.nan)
    return out


def table_significance(frame, block: list[str], runs: dict, thresholds: dict, tasks: dict[str, str],
                       reference: str = "medmix", n_boot: int = N_BOOT, improvements: frozenset[str] = frozenset()):
    """Per block and metric of a paper table's per-seed ``frame``: the paper's MedMIX (``reference``)
    vs the other method with the best mean, then each named improvement (``improvements``, e.g.
    ``medmix_stacked``) vs that same best other method and vs the paper's MedMIX. Columns: the
    block, ``method`` (the compared run), ``metric``, ``other``, ``diff`` (mean difference),
    ``p_paired``, ``ci_low``, ``ci_high``.

    "Other methods" are the comparison's runs: neither the reference nor an improvement.
    ``runs``: (dataset, method, train_protocol) -> prediction frame; ``thresholds``: (dataset, method,
    train_protocol, seed) -> per-label thresholds. A ``label`` column in ``frame`` (Table E8) restricts
    the bootstrap to that label. Blocks without the reference or another method are skipped; multi-class
    datasets get the paired test only (the bootstrap re-implements the binary-label metrics).
    """
    import pandas as pd

    rows = []
    columns = [*block, "method", "metric", "other", "diff", "p_paired", "ci_low", "ci_high"]
    if frame.empty or reference not in set(frame.method):
        return pd.DataFrame(columns=columns)
    for key, part in frame.groupby(block, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        where = dict(zip(block, key, strict=True))
        ref = part[part.method == reference]
        others = part[(part.method != reference) & ~part.method.isin(improvements)]
        if ref.empty or others.empty:
            continue
        means = others.groupby("method", sort=False)[list(METRICS)].mean()
        boot = _Bootstrap(runs, thresholds, n_boot, tasks.get(ref.dataset.iloc[0]) == "multiclass")
        for m in METRICS:
            if means[m].isna().all():
                continue
            best = str(means[m].idxmax())
            rows.append({**where, **boot.compare(reference, ref, best, others[others.method == best], m)})
            for run in [r for r in dict.fromkeys(part.method) if r in improvements]:
                imp = part[part.method == run]
                rows.append({**where, **boot.compare(run, imp, best, others[others.method == best], m)})
                rows.append({**where, **boot.compare(run, imp, reference, ref, m)})
    return pd.DataFrame(rows, columns=columns)


class _Bootstrap:
    """Paired comparisons of two runs' per-seed rows within one block (bootstrap CIs cached per pair)."""

    def __init__(self, runs: dict, thresholds: dict, n_boot: int, multiclass: bool):
        self.runs, self.thresholds, self.n_boot, self.multiclass = runs, thresholds, n_boot, multiclass
        self.cache: dict[tuple[str, str], dict] = {}

    def compare(self, a_name: str, a, b_name: str, b, m: str) -> dict[str, Any]:
        paired = a[["seed", m]].merge(b[["seed", m]], on="seed", suffixes=("_a", "_b"))
        if (a_name, b_name) not in self.cache:
            self.cache[a_name, b_name] = {} if self.multiclass else _boot_pair(a, b, self.runs, self.thresholds,
                                                                              self.n_boot)
        lo, hi = self.cache[a_name, b_name].get(m, (np.nan, np.nan))
        return {"method": a_name, "metric": m, "other": b_name, "diff": float(a[m].mean() - b[m].mean()),
                "p_paired": paired_p(paired[f"{m}_a"], paired[f"{m}_b"]), "ci_low": lo, "ci_high": hi}


def _boot_pair(ref, other, runs: dict, thresholds: dict, n_boot: int) -> dict[str, tuple[float, float]]:
    """Bootstrap CIs of ref − other from their predictions (aligned by sample id); {} if unavailable."""
    first = ref.iloc[0]
    label = first.get("label") if "label" in ref.columns else None
    sides = []
    for rows in (ref, other):
        seeds = []
        for _, r in rows.iterrows():
            key = (r.dataset, r.method, r.train_protocol)
            if key not in runs:
                return {}
            pred = runs[key]
            part = pred[(pred.seed == r.seed) & (pred.eval_set == r.eval_set) & (pred.test_protocol == r.test_protocol)]
            part = part.sort_values("sample_id", kind="stable")
            labels = [c[len("prob:"):] for c in part.columns if c.startswith("prob:")]
            thr = thresholds[(*key, r.seed)]
            if label is not None:
                j = labels.index(label)
                labels, thr = [label], thr[j:j + 1]
            seeds.append((part.sample_id.to_numpy(), part[[f"prob:{x}" for x in labels]].to_numpy(float),
                          part[[f"label:{x}" for x in labels]].to_numpy(float), thr))
        sides.append(seeds)
    ids = sides[0][0][0]
    if any(len(s[0]) != len(ids) or (s[0] != ids).any() for side in sides for s in side):
        return {}  # not the same test samples: no paired bootstrap
    return bootstrap_diff([s[1:] for s in sides[0]], [s[1:] for s in sides[1]], n_boot)
