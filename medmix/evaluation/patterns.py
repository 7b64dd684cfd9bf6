"""Metrics per natural missingness pattern (which modalities a test sample has), next to the overall figure.

From the clean runs' clean test predictions (``present:<modality>`` columns, written by the
evaluate job), with each seed's validation thresholds. A pattern's metrics are NaN where its
samples hold a single class of every label (noted in the table); ``n`` is the sample count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medmix.evaluation.paper_tables import HEADERS
from medmix.metrics.classification import METRICS, MF1_DEFINITION, compute_metrics
from medmix.table_text import markdown_table

OVERALL = "all samples"


def _pattern(frame: pd.DataFrame, mods: list[str]) -> pd.Series:
    present = frame[[f"present:{m}" for m in mods]].to_numpy(bool)
    return pd.Series(["+".join(m for m, p in zip(mods, row, strict=True) if p) or "(none)" for row in present],
                     index=frame.index)


def pattern_metrics(runs: dict[tuple, pd.DataFrame], thresholds: dict, tasks: dict[str, str]) -> pd.DataFrame:
    """Per (dataset, method, pattern): mean and std over seeds of each metric, samples per seed."""
    rows = []
    for (dataset, method, train_protocol), frame in runs.items():
        if train_protocol != "none":
            continue
        mods = [c[len("present:"):] for c in frame.columns if c.startswith("present:")]
        labels = [c[len("prob:"):] for c in frame.columns if c.startswith("prob:")]
        test = frame[(frame.eval_set == "test") & (frame.test_protocol == "none")]
        if test.empty or not mods:
            continue
        test = test.assign(_pattern=_pattern(test, mods))
        for seed, part in test.groupby("seed"):
            thr = thresholds[(dataset, method, train_protocol, seed)]
            for pattern, cell in [(OVERALL, part), *part.groupby("_pattern", sort=True)]:
                m = compute_metrics(cell[[f"prob:{x}" for x in labels]].to_numpy(float),
                                    cell[[f"label:{x}" for x in labels]].to_numpy(float), tasks[dataset], thr)
                rows.append({"dataset": dataset, "method": method, "pattern": pattern, "seed": seed,
                             "n": len(cell), **m})
    cols = ["dataset", "method", "pattern", "n", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], "seeds"]
    if not rows:
        return pd.DataFrame(columns=cols)
    f = pd.DataFrame(rows)
    g = f.groupby(["dataset", "method", "pattern"], sort=False)
    out = g[list(METRICS)].mean().add_suffix("_mean").join(g[list(METRICS)].std(ddof=1).fillna(0.0).add_suffix("_std"))
    out = out.join(g["n"].first()).join(g["seed"].nunique().rename("seeds")).reset_index()
    return out[cols]


def patterns_markdown(summary: pd.DataFrame, seeds: Sequence[int]) -> str:
    lines = ["# Metrics per natural missingness pattern", "",
             f"Clean runs on the clean test split; a pattern lists the modalities a sample has. Mean ± std over seeds "
             f"{list(seeds)}; n = samples per seed. {MF1_DEFINITION} n/a: the pattern's samples hold one class "
             "of every label.", ""]
    if summary.empty:
        return "\n".join([*lines, "No clean test predictions with modality presence columns.", ""])
    for dataset, part in summary.groupby("dataset", sort=False):
        rows = [{"method": r.method, "pattern": r.pattern, "n": int(r.n),
                 **{HEADERS[m]: f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f}" if np.isfinite(r[f"{m}_mean"])
                    else "n/a" for m in METRICS}} for _, r in part.iterrows()]
        lines += [f"## {dataset}", "", markdown_table(pd.DataFrame(rows)), ""]
    return "\n".join(lines)
