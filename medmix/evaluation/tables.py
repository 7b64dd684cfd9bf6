"""Per-run metrics from cached predictions and the paper-style Markdown tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medmix.evaluation.metrics import METRICS, compute_metrics, tune_thresholds

#: The columns that identify one run's predictions (every prediction file carries them).
RUN_KEYS = ["dataset", "method", "train_protocol"]


def run_metrics(predictions: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (seed, eval_set, test_protocol) of one run; thresholds from the seed's clean val rows."""
    labels = [c[len("prob:") :] for c in predictions.columns if c.startswith("prob:")]
    pcols, ycols = [f"prob:{x}" for x in labels], [f"label:{x}" for x in labels]
    rows = []
    for seed, by_seed in predictions.groupby("seed"):
        val = by_seed[(by_seed.eval_set == "val") & (by_seed.test_protocol == "none")]
        if val.empty:
            raise ValueError(f"seed {seed}: no clean validation predictions to tune thresholds on")
        thr = tune_thresholds(val[pcols].to_numpy(float), val[ycols].to_numpy(float))
        for (eval_set, protocol), part in by_seed.groupby(["eval_set", "test_protocol"]):
            if eval_set == "val":
                continue
            m = compute_metrics(part[pcols].to_numpy(float), part[ycols].to_numpy(float), task, thr)
            rows.append({"seed": seed, "eval_set": eval_set, "test_protocol": protocol, "n": len(part), **m,
                         **{c: by_seed[c].iloc[0] for c in by_seed.columns if c.startswith("hp:")}})
    return pd.DataFrame(rows)


def collect(prediction_files: list[str], tasks: dict[str, str]) -> pd.DataFrame:
    """Metrics of every run, identified by the prediction files' own columns (never their paths).

    A run's files (its development cohort and any external cohorts) are read together, so the
    external rows use the thresholds tuned on the development cohort's validation split.
    """
    frames = [pd.read_parquet(f) for f in prediction_files]
    missing = [f for f, fr in zip(prediction_files, frames, strict=True) if not set(RUN_KEYS) <= set(fr.columns)]
    if missing:
        raise ValueError(f"prediction files without the run columns {RUN_KEYS}: {missing[:3]}; rerun their evaluate jobs")
    runs: dict[tuple, list[pd.DataFrame]] = {}
    for frame in frames:
        for keys, part in frame.groupby(RUN_KEYS, sort=False):
            runs.setdefault(keys, []).append(part)
    out = []
    for keys, parts in runs.items():
        m = run_metrics(pd.concat(parts, ignore_index=True), tasks[keys[0]])
        for name, value in reversed(list(zip(RUN_KEYS, keys, strict=True))):
            m.insert(0, name, value)
        out.append(m)
    return pd.concat(out, ignore_index=True)


def _fmt(values: pd.Series) -> str:
    v = values.to_numpy(float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.4f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.4f}"


def summary_table(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = metrics.groupby(keys, sort=False).agg({m: _fmt for m in METRICS}).reset_index()
    n_seeds = metrics.groupby(keys, sort=False)["seed"].nunique().to_numpy()
    out["seeds"] = n_seeds
    hp = [c for c in metrics.columns if c.startswith("hp:")]
    if hp:  # the hyper-parameters chosen on validation per seed (training.lr_grid etc.)
        out["chosen on val"] = [_chosen(g, hp) for _, g in metrics.groupby(keys, sort=False)]
    return out


def _chosen(frame: pd.DataFrame, hp: list[str]) -> str:
    """``lr 0.001 ×2, 0.0003 ×1; weight_decay 0.01 ×3`` over the seeds of ``frame`` ("-" if none)."""
    per_seed = frame.drop_duplicates("seed")
    parts = []
    for c in hp:
        counts = per_seed[c].dropna().value_counts(sort=False)
        if len(counts):
            parts.append(f"{c[3:]} " + ", ".join(f"{v:g} ×{n}" for v, n in sorted(counts.items())))
    return "; ".join(parts) or "-"


def to_markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def main_table_markdown(metrics: pd.DataFrame, seeds: list[int]) -> str:
    clean = metrics[(metrics.train_protocol == "none") & (metrics.test_protocol == "none")]
    lines = [
        "# Main results",
        "",
        f"Mean ± std over seeds {seeds}; thresholds for mF1/Acc tuned per seed on the validation split; "
        "AUROC/AUPRC macro-averaged over labels. No missing-modality protocol (natural missingness only).",
        "",
    ]
    groups = sorted(clean.groupby(["dataset", "eval_set"], sort=False), key=lambda g: (
        list(dict.fromkeys(clean.dataset)).index(g[0][0]), g[0][1] != "test", g[0][1]))
    for (dataset, eval_set), part in groups:
        title = f"{dataset} — {eval_set}" if eval_set == "test" else f"{dataset} → {eval_set.split(':', 1)[1]} (external validation)"
        lines += [f"## {title}", "", to_markdown(summary_table(part, ["method"])), ""]
    return "\n".join(lines)


def robustness_markdown(metrics: pd.DataFrame) -> str:
    lines = ["# Robustness to missing modalities", "",
             "Rows: train-time protocol × test-time protocol (masks drawn with a fixed seed).", ""]
    for dataset, part in metrics[metrics.eval_set == "test"].groupby("dataset", sort=False):
        table = summary_table(part, ["method", "train_protocol", "test_protocol"])
        lines += [f"## {dataset}", "", to_markdown(table), ""]
    return "\n".join(lines)
