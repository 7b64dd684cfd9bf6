"""The paper's figures from the tables' per-seed rows (matplotlib, PNG + PDF).

* ``fig2_one_modality_drop``: metric vs drop rate, one line per (method, dropped modality); top row
  train-time drop (Table E2), bottom row test-time drop (Table E3); one column per metric.
* ``fig3_random_drop``: the same for the multi-random drop (Tables E4 / E5), one line per method.
* ``fig4_ablation``: Table E7's bars, one group per metric, one bar per run (mean ± std over seeds).
* ``fig_per_label_f1``: per-label (per-task / per-class) mF1 bars per method from Table E8's rows.
* ``fig5_efficiency``: Perf against the total parameter, FLOP and peak-memory ratios to MedMIX
  (one point per dataset × method; log x) and the EffScore bars (Table E6's rows).

Each figure is drawn per development dataset as a row block; a figure without data is a page
saying which config setting produces it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medmix.evaluation.paper_tables import BEYOND_MARK, HEADERS, HOW, PaperTable, summarise
from medmix.metrics.classification import METRICS
from medmix.store.atomic import atomic_path

FIGURES = ("fig2_one_modality_drop", "fig3_random_drop", "fig4_ablation", "fig_per_label_f1", "fig5_efficiency")


def _save(fig, paths: list[str]) -> None:
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix[1:], dpi=100)


def _empty(plt, text: str):
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9)
    return fig


def _name(table: PaperTable, method: str) -> str:
    """A run's legend label: marked when it is an improvement beyond the paper (as in the tables)."""
    return f"{method} {BEYOND_MARK}" if method in table.marked else method


def _rate_figure(plt, tables: list[PaperTable], by_modality: bool, clean: PaperTable):
    """Rows: dataset × table; the clean run (Table 1) is each line's point at rate 0."""
    sums = [(t, summarise(t)) for t in tables]
    base = summarise(clean)
    datasets = list(dict.fromkeys(d for _, s in sums for d in s.get("dataset", [])))
    if not datasets:
        return _empty(plt, "Not configured: " + "; ".join(HOW[t.name] for t in tables))
    nrows = len(datasets) * len(tables)
    fig, axes = plt.subplots(nrows, len(METRICS), figsize=(3.2 * len(METRICS), 2.6 * nrows), squeeze=False)
    for i, (dataset, (table, s)) in enumerate((d, ts) for d in datasets for ts in sums):
        part = s[s.dataset == dataset] if len(s) else s
        for j, m in enumerate(METRICS):
            ax = axes[i, j]
            groups = part.groupby(["method", "modality"] if by_modality else ["method"], sort=False) if len(part) else []
            for key, g in groups:
                key = key if isinstance(key, tuple) else (key,)
                anchor = base[(base.dataset == dataset) & (base.method == key[0])] if len(base) else base
                g = pd.concat([anchor.assign(rate=0.0), g]).sort_values("rate")
                ax.errorbar(g.rate, g[f"{m}_mean"], yerr=g[f"{m}_std"], marker="o", capsize=2, label=" / ".join([_name(table, key[0]), *key[1:]]))
            ax.set_title(f"{dataset}: {table.name[5:]} {HEADERS[m]}", fontsize=8)
            ax.set_xlabel("drop rate (0: clean)", fontsize=8)
            ax.set_xlim(-0.05, 1.0)
            if not len(part):
                ax.text(0.5, 0.5, "not configured", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            elif j == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def _bar_panels(plt, table: PaperTable, draw) -> object:
    """One bar panel per development dataset of ``table``'s summary (``draw(ax, dataset, rows)``), or
    the page saying which config setting produces the table."""
    s = summarise(table)
    if s.empty:
        return _empty(plt, f"Not configured: {HOW[table.name]}")
    datasets = list(dict.fromkeys(s.dataset))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8, 3 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        draw(ax, dataset, s[s.dataset == dataset])
    fig.tight_layout()
    return fig


def _ablation_figure(plt, table: PaperTable):
    def draw(ax, dataset, part):
        width = 0.8 / len(part)
        x = np.arange(len(METRICS))
        for k, (_, r) in enumerate(part.iterrows()):
            ax.bar(x + k * width, [r[f"{m}_mean"] for m in METRICS], width,
                   yerr=[r[f"{m}_std"] for m in METRICS], capsize=2, label=_name(table, r.method))
        ax.set_xticks(x + width * (len(part) - 1) / 2, [HEADERS[m] for m in METRICS])
        ax.set_title(f"{dataset}: structural ablations (Table E7)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)

    return _bar_panels(plt, table, draw)


def _per_label_figure(plt, table: PaperTable):
    def draw(ax, dataset, part):
        labels, methods = list(dict.fromkeys(part.label)), list(dict.fromkeys(part.method))
        width = 0.8 / len(methods)
        x = np.arange(len(labels))
        for k, method in enumerate(methods):
            rows = part[part.method == method].set_index("label").reindex(labels)
            ax.bar(x + k * width, rows.mf1_mean, width, yerr=rows.mf1_std, capsize=2, label=_name(table, method))
        ax.set_xticks(x + width * (len(methods) - 1) / 2, labels, fontsize=7, rotation=20)
        ax.set_ylabel("mF1", fontsize=8)
        ax.set_title(f"{dataset}: per-label mF1 (both classes; Table E8)", fontsize=9)
        ax.legend(fontsize=7)

    return _bar_panels(plt, table, draw)


def _efficiency_figure(plt, frame: pd.DataFrame | None):
    """Three Perf-vs-relative-cost panels and the EffScore bars (Table E6)."""
    if frame is None or frame.empty or not np.isfinite(frame.get("effscore", pd.Series(dtype=float))).any():
        return _empty(plt, "Not configured: Table E6 needs a `medmix` run and the other runs' fit.json cost records")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    methods = list(dict.fromkeys(frame.method))
    datasets = list(dict.fromkeys(frame.dataset))
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colours = {m: cmap(i % cmap.N) for i, m in enumerate(methods)}
    markers = {d: "osD^v<>P*X"[i % 10] for i, d in enumerate(datasets)}
    for ax, (cost, label) in zip(axes[:3], (("params", "parameters"), ("flops", "FLOPs"), ("mem", "peak memory")),
                                 strict=True):
        for _, r in frame.iterrows():
            if np.isfinite(r[f"{cost}_ratio"]) and r[f"{cost}_ratio"] > 0:
                ax.scatter(r[f"{cost}_ratio"], r.perf, color=colours[r.method], marker=markers[r.dataset], s=30)
        ax.set_xscale("log")
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.set_xlabel(f"relative {label} (MedMIX = 1)", fontsize=8)
        ax.set_ylabel("Perf", fontsize=8)
        ax.axvline(1.0, color="grey", lw=0.5, ls="--")
    width = 0.8 / len(datasets)
    x = np.arange(len(methods))
    for k, d in enumerate(datasets):
        part = frame[frame.dataset == d].set_index("method").reindex(methods)
        axes[3].bar(x + k * width, part.effscore, width, label=d)
    axes[3].set_xticks(x + width * (len(datasets) - 1) / 2, methods, fontsize=7, rotation=45, ha="right")
    axes[3].set_ylabel("EffScore", fontsize=8)
    axes[3].axhline(1.0, color="grey", lw=0.5, ls="--")
    axes[3].legend(fontsize=7)
    handles = [plt.Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in methods]
    handles += [plt.Line2D([], [], color="k", marker=markers[d], ls="", label=d) for d in datasets]
    axes[0].legend(handles=handles, fontsize=6, ncol=2)
    fig.suptitle("Efficiency (Table E6): lower cost and higher Perf are better", fontsize=9)
    fig.tight_layout()
    return fig


def write_figures(tables: dict[str, PaperTable], outputs: list[str], efficiency: pd.DataFrame | None = None) -> None:
    """Write every ``results/figures/<figure>.<png|pdf>`` of ``outputs`` (``efficiency``: Table E6's frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    makers = {
        "fig2_one_modality_drop": lambda: _rate_figure(plt, [tables["tableE2"], tables["tableE3"]], True,
                                                               tables["table1"]),
        "fig3_random_drop": lambda: _rate_figure(plt, [tables["tableE4"], tables["tableE5"]], False,
                                                         tables["table1"]),
        "fig4_ablation": lambda: _ablation_figure(plt, tables["tableE7"]),
        "fig_per_label_f1": lambda: _per_label_figure(plt, tables["tableE8"]),
        "fig5_efficiency": lambda: _efficiency_figure(plt, efficiency),
    }
    for name, make in makers.items():
        paths = [p for p in outputs if Path(p).stem == name]
        if paths:
            fig = make()
            _save(fig, paths)
            plt.close(fig)
