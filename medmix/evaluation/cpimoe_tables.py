"""CP-IMoE's tables and figures (supplementary): Table S3-style results over the missing grid,
per-class F1 (Fig. S1 data), Table S2 (training cost) and the router-weight heatmaps (Figs. S2-S4).

Metrics of a (dataset, method, setting, rate, seed) cell are computed on the test split under the
cell's protocol (:mod:`medmix.plan.missing_grid`): macro F1 over classes (labels), Cohen's kappa and
accuracy — the supplementary's three — plus per-class F1. Multiclass: argmax predictions.
Multilabel / multitask / binary: per-label decisions at thresholds tuned on the seed's clean
validation predictions (as the main tables), kappa and accuracy averaged over labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, f1_score

from medmix.evaluation.tables import RUN_KEYS
from medmix.metrics.classification import tune_thresholds
from medmix.store import read_predictions
from medmix.table_text import markdown_table


def cell_metrics(prob: np.ndarray, y: np.ndarray, task: str, labels: Sequence[str],
                 thresholds: np.ndarray | None) -> dict[str, float]:
    """F1 (macro), kappa, accuracy and ``f1:<label>`` of one set of predictions."""
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "multiclass":
            known = ~np.isnan(y).any(1)
            truth, pred = y[known].argmax(1), prob[known].argmax(1)
            ids = np.arange(len(labels))
            per = f1_score(truth, pred, labels=ids, average=None, zero_division=0)
            present = np.unique(truth)
            out = {"f1": float(f1_score(truth, pred, labels=present, average="macro", zero_division=0)),
                   "kappa": float(cohen_kappa_score(truth, pred)), "acc": float((truth == pred).mean())}
            out.update({f"f1:{lab}": float(per[i]) for i, lab in enumerate(labels)})
            return out
        thr = np.full(prob.shape[1], 0.5) if thresholds is None else thresholds
        f1s, kappas, accs = [], [], []
        for c, lab in enumerate(labels):
            known = ~np.isnan(y[:, c])
            yc, pc = y[known, c].astype(int), (prob[known, c] >= thr[c]).astype(int)
            if yc.size == 0:
                continue
            f = float(f1_score(yc, pc, zero_division=0))
            out[f"f1:{lab}"] = f
            f1s.append(f)
            k = cohen_kappa_score(yc, pc) if len(np.unique(np.r_[yc, pc])) > 1 else np.nan
            kappas.append(float(k))
            accs.append(float((yc == pc).mean()))
    out.update({"f1": float(np.mean(f1s)) if f1s else np.nan, "kappa": float(np.nanmean(kappas)) if kappas else np.nan,
                "acc": float(np.mean(accs)) if accs else np.nan})
    return out


def grid_metrics(prediction_files: Sequence[str], tasks: dict[str, str], cells: Sequence[tuple[str, float, str]],
                 mode: str) -> pd.DataFrame:
    """One row per (dataset, method, setting, rate, seed) with :func:`cell_metrics`'s columns."""
    by_protocol = {p: (s, r) for s, r, p in cells}
    rows = []
    for path in prediction_files:
        frame = read_predictions(path)
        if not set(RUN_KEYS) <= set(frame.columns):
            raise ValueError(f"{path}: no run columns {RUN_KEYS}; rerun its evaluate job")
        labels = [c[len("prob:"):] for c in frame.columns if c.startswith("prob:")]
        pcols, ycols = [f"prob:{x}" for x in labels], [f"label:{x}" for x in labels]
        for (dataset, method, train_protocol), run in frame.groupby(RUN_KEYS, sort=False):
            for seed, part in run.groupby("seed"):
                val = part[(part.eval_set == "val") & (part.test_protocol == "none")]
                if val.empty:
                    raise ValueError(f"{path}: seed {seed} has no clean validation predictions to tune thresholds on")
                thr = tune_thresholds(val[pcols].to_numpy(float), val[ycols].to_numpy(float))
                test = part[part.eval_set == "test"]
                for protocol, cell in test.groupby("test_protocol"):
                    if protocol not in by_protocol:
                        continue
                    if mode == "train_and_test" and train_protocol != protocol:
                        continue
                    if mode == "test_only" and train_protocol != "none":
                        continue
                    setting, rate = by_protocol[protocol]
                    m = cell_metrics(cell[pcols].to_numpy(float), cell[ycols].to_numpy(float), tasks[dataset],
                                     labels, thr)
                    rows.append({"dataset": dataset, "method": method, "setting": setting, "rate": rate,
                                 "seed": seed, "n": len(cell), **m})
    return pd.DataFrame(rows)


def _fmt(values: pd.Series) -> str:
    v = 100 * values.to_numpy(float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.2f}" + (f"±{v.std(ddof=1):.2f}" if v.size > 1 else "")  # one seed: the value alone


def table_s3_markdown(metrics: pd.DataFrame, seeds: Sequence[int], mode: str) -> str:
    """Rows method × setting, columns rate × (F1, Kappa, Acc), per dataset (percent, mean±std over seeds)."""
    lines = ["# Missing-modality grid (CP-IMoE supplementary, Table S3 layout)", "",
             f"Test split; F1 = macro F1 over classes, Kappa = Cohen's kappa, Acc = accuracy (percent, mean±std "
             f"over seeds {list(seeds)}). Missing rate = fraction of samples losing the primary, the secondary, "
             f"or one of the two at random; mode: {mode} "
             + ("(same protocol in training and testing)." if mode == "train_and_test" else "(test time only)."), ""]
    if metrics.empty:
        return "\n".join([*lines, "No grid predictions."])
    for dataset, part in metrics.groupby("dataset", sort=False):
        rates = sorted(part.rate.unique())
        header = ["method", "missing"] + [f"{int(round(r * 100))}% {k}" for r in rates for k in ("F1", "Kappa", "Acc")]
        rows = []
        for (method, setting), cell in part.groupby(["method", "setting"], sort=False):
            row = {"method": method, "missing": setting}
            for r in rates:
                at = cell[cell.rate == r]
                for key, col in (("F1", "f1"), ("Kappa", "kappa"), ("Acc", "acc")):
                    row[f"{int(round(r * 100))}% {key}"] = _fmt(at[col]) if not at.empty else "n/a"
            rows.append(row)
        lines += [f"## {dataset}", "", markdown_table(pd.DataFrame(rows, columns=header)), ""]
    return "\n".join(lines)


def per_class_markdown(metrics: pd.DataFrame) -> str:
    """Per-class F1 (the data of Fig. S1), mean over seeds, percent."""
    lines = ["# Per-class F1 over the missing grid (Fig. S1 data)", ""]
    for dataset, part in metrics.groupby("dataset", sort=False):
        cols = [c for c in part.columns if c.startswith("f1:") and part[c].notna().any()]
        table = part.groupby(["method", "setting", "rate"], sort=False)[cols].mean().mul(100).round(2).reset_index()
        table.columns = [c.removeprefix("f1:") for c in table.columns]
        lines += [f"## {dataset}", "", markdown_table(table), ""]
    return "\n".join(lines)


def gate_means(prediction_files: Sequence[str], cells: Sequence[tuple[str, float, str]], mode: str,
               methods: Sequence[str]) -> pd.DataFrame:
    """Mixing weights averaged over test samples and seeds per (dataset, method, setting, rate, expert):
    CP-IMoE's router weights over its experts (``gate:<expert>``) or, for a method without them,
    MedMIX's fusion weights over the modalities (``fusion:<modality>``; 0 where a modality is absent)."""
    by_protocol = {p: (s, r) for s, r, p in cells}
    rows = []
    for path in prediction_files:
        frame = read_predictions(path)
        gcols = ([c for c in frame.columns if c.startswith("gate:")]
                 or [c for c in frame.columns if c.startswith("fusion:")])
        if not gcols:
            continue
        frame = frame[(frame.eval_set == "test") & frame.method.isin(methods)]
        for (dataset, method, train_protocol, protocol), part in frame.groupby(
                ["dataset", "method", "train_protocol", "test_protocol"], sort=False):
            if protocol not in by_protocol or (mode == "train_and_test" and train_protocol != protocol) or (
                    mode == "test_only" and train_protocol != "none"):
                continue
            setting, rate = by_protocol[protocol]
            for c in gcols:
                kind, _, name = c.partition(":")
                rows.append({"dataset": dataset, "method": method, "setting": setting, "rate": rate,
                             "expert": name, "weight": float(part[c].mean()),
                             "kind": "router" if kind == "gate" else "fusion"})
    return pd.DataFrame(rows)


def gate_figure(gates: pd.DataFrame, dataset: str, method: str):
    """Heatmap: rows (setting, rate), columns experts (or modalities), colour = mean weight (matplotlib, lazy)."""
    from medmix.evaluation.styles import FONTS, pyplot

    plt = pyplot()
    part = gates[(gates.dataset == dataset) & (gates.method == method)]
    table = part.pivot_table(index=["setting", "rate"], columns="expert", values="weight", sort=False)
    with plt.rc_context(FONTS):
        fig, ax = plt.subplots(figsize=(1.8 + 0.9 * table.shape[1], 1.1 + 0.3 * max(1, table.shape[0])),
                               layout="constrained")
        im = ax.imshow(table.to_numpy(float), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(table.shape[1]), list(table.columns), rotation=30, ha="right")
        ax.set_yticks(range(table.shape[0]), [f"{s} {int(round(r * 100))}%" for s, r in table.index])
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                v = table.iat[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
        kind = part["kind"].iloc[0] if "kind" in part and len(part) else "router"
        ax.set_title(f"{method} {kind} weights — {dataset}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def gate_heatmap(gates: pd.DataFrame, dataset: str, method: str, out_png: str | Path) -> None:
    """:func:`gate_figure` written to ``out_png``."""
    from medmix.evaluation.styles import save_png

    save_png(gate_figure(gates, dataset, method), out_png, dpi=120)


def complexity_rows(model_dir: str | Path, cohort_path: str, committee: dict[str, Any], features: dict[str, str],
                    identities: dict[str, dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """Table S2 rows for a fitted CP-IMoE run: last stage vs full training of the same network."""
    import torch

    from medmix.data import Standardizer
    from medmix.methods import load_method
    from medmix.models.cpimoe import training_step_cost
    from medmix.pipeline.fit import SCALER_FILE, load_dataset

    method = load_method(model_dir)
    scaler = Standardizer.load(Path(model_dir) / SCALER_FILE)
    train = scaler.apply(load_dataset(cohort_path, committee, features, identities)).split_part("train")
    n = min(batch_size, train.n)
    x = {m: [t[:n].float() for t in xs] for m, xs in train.x.items()}
    mask = {m: t[:n] for m, t in train.mask.items()}
    y = torch.nan_to_num(train.y[:n])
    steps = -(-train.n // batch_size)
    rows = []
    for label, full in (("Full model training", True), (f"{method.name} (last stage)", False)):
        c = training_step_cost(method.models[0], x, mask, y, train.task, full=full)
        rows.append({"method": label, "trainable_params": int(c["trainable_params"]),
                     "flops_per_sample": c["flops_per_step"] / c["batch"],
                     "flops_per_epoch": c["flops_per_step"] / c["batch"] * train.n, "steps_per_epoch": steps})
    return rows


def table_s2_markdown(rows_by_dataset: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["# Training cost (CP-IMoE supplementary, Table S2 layout)", "",
             "Trainable parameters and training FLOPs (forward + loss + backward of one step, counted by "
             "torch.utils.flop_counter.FlopCounterMode) of the last stage (adapters and experts frozen) against "
             "full training of the same network. The backbones are the frozen stage-1 experts (cached "
             "embeddings) in both rows, so neither counts them (the paper's 93.3M / 21.0M include its ResNet50s).",
             ""]
    for dataset, rows in rows_by_dataset.items():
        full = rows[0]
        table = []
        for r in rows:
            dp = 100 * (1 - r["trainable_params"] / full["trainable_params"])
            df = 100 * (1 - r["flops_per_epoch"] / full["flops_per_epoch"])
            table.append({"Methods": r["method"],
                          "Trainable Params (M)": f"{r['trainable_params'] / 1e6:.3f}"
                          + (f" (↓ {dp:.1f}%)" if r is not full else ""),
                          "Training FLOPs / epoch (G)": f"{r['flops_per_epoch'] / 1e9:.3f}"
                          + (f" (↓ {df:.1f}%)" if r is not full else ""),
                          "FLOPs / sample (M)": f"{r['flops_per_sample'] / 1e6:.3f}"})
        lines += [f"## {dataset}", "", markdown_table(pd.DataFrame(table)), ""]
    return "\n".join(lines)


def tables_job(*, prediction_files: Sequence[str], tasks: dict[str, str], cells: Sequence[tuple[str, float, str]],
               mode: str, seeds: Sequence[int], figure_methods: Sequence[str], figures: dict[str, str],
               complexity: dict[str, dict[str, Any]], batch_size: int, out: dict[str, str]) -> None:
    """Body of the ``cpimoe_tables`` rule. ``figures``: ``"<dataset>/<method>"`` -> PNG path;
    ``complexity``: dataset -> kwargs of :func:`complexity_rows` (a fitted CP-IMoE run)."""
    from medmix.store.atomic import atomic_path, write_text_atomic

    cells = [(s, float(r), p) for s, r, p in cells]
    metrics = grid_metrics(prediction_files, tasks, cells, mode)
    with atomic_path(out["metrics"]) as tmp:
        metrics.to_csv(tmp, index=False)
    write_text_atomic(out["table_s3"], table_s3_markdown(metrics, seeds, mode) + "\n")
    write_text_atomic(out["per_class"], per_class_markdown(metrics) + "\n")
    gates = gate_means(prediction_files, cells, mode, figure_methods)
    with atomic_path(out["gates"]) as tmp:
        gates.to_csv(tmp, index=False)
    for key, png in figures.items():
        dataset, method = key.split("/", 1)
        if gates.empty or gates[(gates.dataset == dataset) & (gates.method == method)].empty:
            raise ValueError(f"no router weights of {method} on {dataset} in the grid predictions")
        gate_heatmap(gates, dataset, method, png)
    rows = {d: complexity_rows(batch_size=batch_size, **kw) for d, kw in complexity.items()}
    write_text_atomic(out["table_s2"], table_s2_markdown(rows) + "\n")
