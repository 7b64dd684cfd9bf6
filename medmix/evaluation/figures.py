"""The paper's figures from the tables' per-seed rows (matplotlib, PNG + PDF).

* ``fig2_one_modality_drop``: metric vs drop rate, one line per (method, dropped modality: line
  style); a row per dataset and drop side that was run (train-time: Table E2, test-time: Table E3),
  a column per metric.
* ``fig3_random_drop``: the same for the multi-random drop (Tables E4 / E5), one line per method.
* ``fig4_ablation``: Table E7's runs, mean ± std over seeds, a row per dataset, a column per metric.
* ``fig_per_label_f1``: per-label (per-task / per-class) mF1 per method from Table E8's rows.
* ``fig5_efficiency``: Perf against the total parameter, FLOP and peak-memory ratios to MedMIX
  (log x) and EffScore per method (Table E6's rows), a row per dataset.

Only what was run is drawn: a panel without data is left out, and a figure with none is a page
saying which config setting produces it. Each method keeps its colour and marker in every figure
(:mod:`medmix.evaluation.styles`); the legend sits right of the panels; y-axes are scaled to the
values (not to 0), with std over seeds as error bars.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medmix.evaluation.paper_tables import BEYOND_MARK, HEADERS, HOW, PaperTable, summarise
from medmix.evaluation.styles import (
    FONTS,
    drop_unused,
    legend_outside,
    method_handle,
    method_styles,
    no_data_page,
    pyplot,
)
from medmix.metrics.classification import METRICS
from medmix.store.atomic import atomic_path

FIGURES = ("fig2_one_modality_drop", "fig3_random_drop", "fig4_ablation", "fig_per_label_f1", "fig5_efficiency")
#: Line styles of the dropped modalities (Fig. 2).
DASHES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
#: Short names of the drop tables' rows (Figs. 2 / 3).
DROP_SIDE = {"tableE2": "E2, train-time drop", "tableE3": "E3, test-time drop",
             "tableE4": "E4, train-time drop", "tableE5": "E5, test-time drop"}


def _save(fig, paths: list[str]) -> None:
    for path in paths:
        fmt = Path(path).suffix[1:]
        # No creation date in a PDF: the same tables give the same bytes.
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=100, metadata=metadata)


def _name(table: PaperTable, method: str) -> str:
    """A run's legend label: marked when it is an improvement beyond the paper (as in the tables)."""
    return f"{method} {BEYOND_MARK}" if method in table.marked else method


def _panels(nrows: int, ncols: int, width: float, height: float):
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                                  layout="constrained")
    return fig, axes


def _handles(table: PaperTable, methods: Sequence[str], styles, line: bool = True) -> list:
    return [method_handle(styles[m], _name(table, m), line) for m in dict.fromkeys(methods)]


def _rate_figure(tables: list[PaperTable], by_modality: bool, clean: PaperTable, styles):
    """A row per (dataset, table) with rows; the clean run (Table 1) is each line's point at rate 0."""
    sums = [(t, summarise(t)) for t in tables]
    rows = [(d, t, s[s.dataset == d]) for d in dict.fromkeys(d for _, s in sums for d in s.dataset)
            for t, s in sums if (s.dataset == d).any()]
    if not rows:
        return no_data_page("Not run. " + "; ".join(f"{t.name}: {HOW[t.name]}" for t in tables))
    base = summarise(clean)
    keys = ["method", "modality"] if by_modality else ["method"]
    modalities = list(dict.fromkeys(m for _, _, part in rows for m in part.get("modality", [])))
    fig, axes = _panels(len(rows), len(METRICS), 2.4, 1.9)
    for i, (dataset, table, part) in enumerate(rows):
        for j, m in enumerate(METRICS):
            ax = axes[i, j]
            for key, g in part.groupby(keys, sort=False):
                key = key if isinstance(key, tuple) else (key,)
                anchor = base[(base.dataset == dataset) & (base.method == key[0])]
                g = pd.concat([anchor.assign(rate=0.0), g]).sort_values("rate")
                style = styles[key[0]]
                ax.errorbar(g.rate, g[f"{m}_mean"], yerr=g[f"{m}_std"], color=style.colour, marker=style.marker,
                            ms=4, capsize=2, lw=1,
                            ls=DASHES[modalities.index(key[1]) % len(DASHES)] if by_modality else "-")
            ax.set_title(HEADERS[m] if i == 0 else None)
            ax.set_ylabel(f"{dataset}\n{DROP_SIDE[table.name]}" if j == 0 else None)
            ax.set_xlabel("drop rate (0: clean)" if i == len(rows) - 1 else None)
    handles = _handles(tables[0], [m for _, _, part in rows for m in part.method], styles)
    if by_modality:
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], color="black", ls=DASHES[k % len(DASHES)], label=f"dropped: {mod}")
                    for k, mod in enumerate(modalities)]
    legend_outside(fig, handles)
    return fig


def _dots(ax, x: float, width: float, rows: pd.DataFrame, metric: str, styles) -> None:
    """One point per method (mean, std as error bar) around ``x``, spread over ``width``."""
    k = len(rows)
    for n, (_, r) in enumerate(rows.iterrows()):
        style = styles[r.method]
        ax.errorbar(x + (n - (k - 1) / 2) * width / max(k, 1), r[f"{metric}_mean"], yerr=r[f"{metric}_std"],
                    color=style.colour, marker=style.marker, ms=5, capsize=2, ls="")


def _ablation_figure(table: PaperTable, styles):
    s = summarise(table)
    if s.empty:
        return no_data_page(f"Not run. Table E7: {HOW[table.name]}")
    datasets = list(dict.fromkeys(s.dataset))
    fig, axes = _panels(len(datasets), len(METRICS), 1.2 + 0.15 * s.method.nunique(), 1.9)
    for i, dataset in enumerate(datasets):
        part = s[s.dataset == dataset]
        for j, m in enumerate(METRICS):
            ax = axes[i, j]
            _dots(ax, 0.0, 0.8, part, m, styles)
            ax.set_xticks([])
            ax.set_title(HEADERS[m] if i == 0 else None)
            ax.set_ylabel(dataset if j == 0 else None)
    legend_outside(fig, _handles(table, s.method, styles, line=False))
    return fig


def _per_label_figure(table: PaperTable, styles):
    s = summarise(table)
    if s.empty:
        return no_data_page(f"Not run. Table E8: {HOW[table.name]}")
    datasets = list(dict.fromkeys(s.dataset))
    width = max(1.0, 0.1 * s.method.nunique()) * s.groupby("dataset").label.nunique().max()
    fig, axes = _panels(len(datasets), 1, 0.8 + width, 2.0)
    for ax, dataset in zip(axes[:, 0], datasets, strict=True):
        part = s[s.dataset == dataset]
        labels = list(dict.fromkeys(part.label))
        for x, label in enumerate(labels):
            _dots(ax, x, 0.8, part[part.label == label], "mf1", styles)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_ylabel("mF1")
        ax.set_title(f"{dataset}: per-label mF1 (both classes)")
    legend_outside(fig, _handles(table, s.method, styles, line=False))
    return fig


COST_AXES = (("params", "parameters"), ("flops", "FLOPs"), ("mem", "peak memory"))


def _efficiency_figure(frame: pd.DataFrame | None, table1: PaperTable, styles):
    """Perf vs each relative cost that was measured, and EffScore per method (Table E6); a row per dataset."""
    if frame is None or frame.empty or not np.isfinite(frame.get("effscore", pd.Series(dtype=float))).any():
        return no_data_page("Not run. Table E6 needs a `medmix` run and the other runs' fit.json cost records")
    datasets = [d for d in dict.fromkeys(frame.dataset) if np.isfinite(frame[frame.dataset == d].effscore).any()]
    costs = [(c, label) for c, label in COST_AXES if np.isfinite(frame[f"{c}_ratio"]).any()]
    fig, axes = _panels(len(datasets), len(costs) + 1, 2.4, 2.0)
    used = set()
    for i, dataset in enumerate(datasets):
        part = frame[frame.dataset == dataset]
        for j, (cost, label) in enumerate(costs):
            ok = part[np.isfinite(part[f"{cost}_ratio"]) & (part[f"{cost}_ratio"] > 0)]
            if ok.empty:
                continue
            ax = axes[i, j]
            used.add((i, j))
            for _, r in ok.iterrows():
                ax.scatter(r[f"{cost}_ratio"], r.perf, color=styles[r.method].colour, marker=styles[r.method].marker,
                           s=25)
            ax.set_xscale("log")
            ax.tick_params(axis="x", which="minor", labelbottom=False)
            ax.axvline(1.0, color="grey", lw=0.5, ls="--")
            ax.set_xlabel(f"relative {label} (MedMIX = 1)")
            ax.set_ylabel("Perf")
            ax.set_title(f"{dataset}: Perf vs {label}")
        ax = axes[i, len(costs)]
        used.add((i, len(costs)))
        ok = part[np.isfinite(part.effscore)]
        for x, (_, r) in enumerate(ok.iterrows()):
            ax.scatter(x, r.effscore, color=styles[r.method].colour, marker=styles[r.method].marker, s=25)
        if ok.effscore.max() / max(ok.effscore.min(), 1e-12) > 20:
            ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.5, ls="--")
        ax.set_xticks([])
        ax.set_ylabel("EffScore (MedMIX = 1)")
        ax.set_title(f"{dataset}: EffScore")
    drop_unused(axes, used)
    fig.suptitle("Efficiency (Table E6): lower cost and higher Perf are better")
    legend_outside(fig, _handles(table1, frame.method, styles, line=False))
    return fig


def figure_makers(tables: dict[str, PaperTable], efficiency: pd.DataFrame | None = None,
                  runs: Sequence[str] = ()) -> dict[str, object]:
    """Figure name -> a function drawing it (a matplotlib figure; call inside ``rc_context(FONTS)``).
    ``runs``: the configured runs, in config order (they fix each variant's style)."""
    present = [m for t in tables.values() for m in t.frame.get("method", [])]
    if efficiency is not None and len(efficiency):
        present += list(efficiency.method)
    styles = method_styles([*runs, *present])
    return {
        "fig2_one_modality_drop": lambda: _rate_figure([tables["tableE2"], tables["tableE3"]], True,
                                                       tables["table1"], styles),
        "fig3_random_drop": lambda: _rate_figure([tables["tableE4"], tables["tableE5"]], False, tables["table1"],
                                                 styles),
        "fig4_ablation": lambda: _ablation_figure(tables["tableE7"], styles),
        "fig_per_label_f1": lambda: _per_label_figure(tables["tableE8"], styles),
        "fig5_efficiency": lambda: _efficiency_figure(efficiency, tables["table1"], styles),
    }


def start_figures(tables: dict[str, PaperTable], outputs: list[str], efficiency: pd.DataFrame | None = None,
                  runs: Sequence[str] = (), processes: int = 1):
    """Write the figures (:func:`write_figures`) in a forked process while the caller goes on, when
    ``processes`` > 1 on Linux; otherwise here and now. Returns a wait function: it returns once
    every figure is written and re-raises the drawing's error, if any."""
    if processes < 2 or not sys.platform.startswith("linux"):
        write_figures(tables, outputs, efficiency, runs)
        return lambda: None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    future = pool.submit(write_figures, tables, outputs, efficiency, list(runs))

    def wait() -> None:
        try:
            future.result()
        finally:
            pool.shutdown()

    return wait


def write_figures(tables: dict[str, PaperTable], outputs: list[str], efficiency: pd.DataFrame | None = None,
                  runs: Sequence[str] = ()) -> None:
    """Write every ``results/figures/<figure>.<png|pdf>`` of ``outputs`` (``efficiency``: Table E6's
    frame; ``runs``: the configured runs, which fix the variants' styles)."""
    plt = pyplot()
    for name, make in figure_makers(tables, efficiency, runs).items():
        paths = [p for p in outputs if Path(p).stem == name]
        if paths:
            with plt.rc_context(FONTS):
                fig = make()
                _save(fig, paths)
            plt.close(fig)
