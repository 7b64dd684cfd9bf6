"""Per-run metrics from cached predictions and the paper-style Markdown tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medmix.metrics.classification import (
    METRICS,
    MF1_DEFINITION,
    compute_metrics,
    label_metrics,
    split_notes,
    tune_thresholds,
)
from medmix.store import read_predictions
from medmix.table_text import markdown_table

#: The columns that identify one run's predictions (every prediction file carries them).
RUN_KEYS = ["dataset", "method", "train_protocol"]


def seed_thresholds(by_seed: pd.DataFrame, pcols: list[str], ycols: list[str], seed) -> np.ndarray:
    """Per-label thresholds of one seed, tuned for mF1 on its clean validation rows only."""
    val = by_seed[(by_seed.eval_set == "val") & (by_seed.test_protocol == "none")]
    if val.empty:
        raise ValueError(f"seed {seed}: no clean validation predictions to tune thresholds on")
    return tune_thresholds(val[pcols].to_numpy(float), val[ycols].to_numpy(float), objective="mf1")


@dataclass
class RunResults:
    """Per-seed metrics of one run: macro rows, per-label rows, the thresholds per seed, split notes."""

    metrics: pd.DataFrame
    labels: pd.DataFrame
    thresholds: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_results(predictions: pd.DataFrame, task: str) -> RunResults:
    """Metrics per (seed, eval_set, test_protocol) of one run, with the seed's validation thresholds."""
    labels = [c[len("prob:") :] for c in predictions.columns if c.startswith("prob:")]
    pcols, ycols = [f"prob:{x}" for x in labels], [f"label:{x}" for x in labels]
    rows, label_rows, thresholds, notes = [], [], {}, []
    for seed, by_seed in predictions.groupby("seed"):
        thr = thresholds[seed] = seed_thresholds(by_seed, pcols, ycols, seed)
        hp = {c: by_seed[c].iloc[0] for c in by_seed.columns if c.startswith("hp:")}
        for (eval_set, protocol), part in by_seed.groupby(["eval_set", "test_protocol"]):
            if eval_set == "val":
                continue
            prob, y = part[pcols].to_numpy(float), part[ycols].to_numpy(float)
            keys = {"seed": seed, "eval_set": eval_set, "test_protocol": protocol}
            rows.append({**keys, "n": len(part), **compute_metrics(prob, y, task, thr), **hp})
            if task != "multiclass":
                for name, m in zip(labels, label_metrics(prob, y, thr), strict=True):
                    label_rows.append({**keys, "label": name, **m})
            if protocol == "none" and seed == min(predictions.seed):
                notes += split_notes(y, task, labels, eval_set)
    return RunResults(pd.DataFrame(rows), pd.DataFrame(label_rows), thresholds, notes)


def run_metrics(predictions: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (seed, eval_set, test_protocol) of one run; thresholds from the seed's clean val rows."""
    return run_results(predictions, task).metrics


def load_runs(prediction_files: list[str]) -> dict[tuple, pd.DataFrame]:
    """Prediction files -> one frame per run (dataset, method, train_protocol), from the files' own columns.

    A run's files (its development cohort and any external cohorts) are read together, so the
    external rows use the thresholds tuned on the development cohort's validation split.
    """
    frames = [read_predictions(f) for f in prediction_files]  # each verified against its checksum
    missing = [f for f, fr in zip(prediction_files, frames, strict=True) if not set(RUN_KEYS) <= set(fr.columns)]
    if missing:
        raise ValueError(f"prediction files without the run columns {RUN_KEYS}: {missing[:3]}; "
                         "rerun their evaluate jobs")
    runs: dict[tuple, list[pd.DataFrame]] = {}
    for frame in frames:
        for keys, part in frame.groupby(RUN_KEYS, sort=False):
            runs.setdefault(keys, []).append(part)
    return {k: pd.concat(v, ignore_index=True) for k, v in runs.items()}


@dataclass
class Collected:
    """Every run's results: macro ``metrics``, per-label ``labels``, ``thresholds`` by (run keys, seed), notes."""

    metrics: pd.DataFrame
    labels: pd.DataFrame
    thresholds: dict
    notes: list[str]


def collect_all(runs: dict[tuple, pd.DataFrame], tasks: dict[str, str]) -> Collected:
    metrics, labels, thresholds, notes = [], [], {}, []
    for keys, frame in runs.items():
        try:
            res = run_results(frame, tasks[keys[0]])
        except ValueError as err:
            raise ValueError(f"run {dict(zip(RUN_KEYS, keys, strict=True))}: {err}") from err
        for part, out in ((res.metrics, metrics), (res.labels, labels)):
            part = part.copy()
            for name, value in reversed(list(zip(RUN_KEYS, keys, strict=True))):
                part.insert(0, name, value)
            out.append(part)
        thresholds.update({(*keys, s): t for s, t in res.thresholds.items()})
        notes += [f"{keys[0]} ({keys[1]}, {keys[2]}): {n}" for n in res.notes]
    cat = lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame()  # noqa: E731
    return Collected(cat(metrics), cat(labels), thresholds, list(dict.fromkeys(notes)))


def collect(prediction_files: list[str], tasks: dict[str, str]) -> pd.DataFrame:
    """Macro metrics of every run (see :func:`load_runs`)."""
    return collect_all(load_runs(prediction_files), tasks).metrics


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


def main_table_markdown(metrics: pd.DataFrame, seeds: list[int]) -> str:
    clean = metrics[(metrics.train_protocol == "none") & (metrics.test_protocol == "none")]
    lines = [
        "# Main results",
        "",
        f"Mean ± std over seeds {seeds}. {MF1_DEFINITION} No missing-modality protocol (natural missingness only).",
        "",
    ]
    groups = sorted(clean.groupby(["dataset", "eval_set"], sort=False), key=lambda g: (
        list(dict.fromkeys(clean.dataset)).index(g[0][0]), g[0][1] != "test", g[0][1]))
    for (dataset, eval_set), part in groups:
        title = (f"{dataset} — {eval_set}" if eval_set == "test"
                 else f"{dataset} → {eval_set.split(':', 1)[1]} (external validation)")
        lines += [f"## {title}", "", markdown_table(summary_table(part, ["method"])), ""]
    return "\n".join(lines)


def robustness_markdown(metrics: pd.DataFrame) -> str:
    lines = ["# Robustness to missing modalities", "",
             "Rows: train-time protocol × test-time protocol (masks drawn with a fixed seed).", "", MF1_DEFINITION, ""]
    for dataset, part in metrics[metrics.eval_set == "test"].groupby("dataset", sort=False):
        table = summary_table(part, ["method", "train_protocol", "test_protocol"])
        lines += [f"## {dataset}", "", markdown_table(table), ""]
    return "\n".join(lines)
