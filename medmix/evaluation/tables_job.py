"""The ``tables`` job: every table (and figure) from cached predictions; nothing is retrained."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medmix.evaluation import efficiency_table as eff
from medmix.evaluation import paper_tables as pt
from medmix.evaluation.patterns import pattern_metrics, patterns_markdown
from medmix.evaluation.significance import table_significance
from medmix.evaluation.tables import collect_all, load_runs, main_table_markdown, robustness_markdown
from medmix.store.atomic import atomic_path, write_text_atomic

log = logging.getLogger("medmix.tables")


def _csv(frame: pd.DataFrame, path: str) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def tables_job(*, prediction_files: Sequence[str], summaries: Sequence[str], tasks: dict[str, str],
               seeds: Sequence[int], protocols: dict[str, Any], run_methods: dict[str, str],
               dataset_order: Sequence[str] | None = None,
               out: dict[str, str], paper_outputs: Sequence[str], figure_outputs: Sequence[str] = (),
               cost_files: Sequence[str] = (),
               expert_costs: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
               improvements: Sequence[str] | None = None, processes: int = 1) -> None:
    """Write the legacy tables (``out``: main, metrics, robustness, datasets, labels, patterns_md,
    patterns_csv, significance) and every ``results/tables/<table>.<md|tex|csv>`` of ``paper_outputs``.

    Table E6 (``tableE6.*`` among ``paper_outputs``): ``cost_files`` are the evaluate jobs'
    ``results/costs/<dataset>[_<k>].json`` (the tables' runs' measured costs); ``expert_costs``:
    dataset -> run -> the deployed experts' declared costs (medmix.evaluation.efficiency_table).
    ``improvements``: the runs beyond the paper (default: asked of the method registry, which
    imports every method). ``processes`` > 1: the figures are drawn in a second process meanwhile."""
    t0 = time.perf_counter()
    runs = load_runs(list(prediction_files))
    res = collect_all(runs, tasks)
    _csv(res.metrics, out["metrics"])
    _csv(res.labels, out["labels"])
    write_text_atomic(out["main"], main_table_markdown(res.metrics, list(seeds)))
    write_text_atomic(out["robustness"], robustness_markdown(res.metrics))
    parts = [re.sub(r"^(#+) ", r"#\1 ", Path(p).read_text(), flags=re.M) for p in summaries]
    write_text_atomic(out["datasets"], "# Datasets\n\n" + "\n\n".join(p.strip() for p in parts) + "\n")

    improvements = pt.improvement_runs(run_methods) if improvements is None else frozenset(improvements)
    tables = pt.build_tables(res.metrics, res.labels, protocols, run_methods, tasks, dataset_order, improvements)
    for table in tables.values():
        table.notes += [n for n in res.notes if n.split(" ", 1)[0] in set(table.frame.get("dataset", []))]
    efficiency = eff.efficiency_frame(tables["table1"], eff.read_costs(cost_files), expert_costs or {})
    figures_done = None
    if figure_outputs:
        from medmix.evaluation.figures import start_figures

        figures_done = start_figures(tables, list(figure_outputs), efficiency, list(run_methods), processes)
    sig_all = []
    by_path = {Path(p).name: p for p in paper_outputs}
    for name, table in tables.items():
        sig = table_significance(table.frame, table.block, runs, res.thresholds, tasks, improvements=improvements)
        write_text_atomic(by_path[f"{name}.md"], pt.to_markdown(table, seeds, sig))
        write_text_atomic(by_path[f"{name}.tex"], pt.to_latex(table, seeds))
        _csv(pt.to_csv_frame(table, sig), by_path[f"{name}.csv"])
        if len(sig):
            sig_all.append(sig.assign(table=name))
    if "tableE6.md" in by_path:
        write_text_atomic(by_path["tableE6.md"], eff.to_markdown(efficiency))
        write_text_atomic(by_path["tableE6.tex"], eff.to_latex(efficiency))
        _csv(eff.to_csv_frame(efficiency), by_path["tableE6.csv"])
    sig_cols = ["table", "dataset", "metric", "method", "other", "diff", "p_paired", "ci_low", "ci_high"]
    sig_frame = pd.concat(sig_all, ignore_index=True) if sig_all else pd.DataFrame(columns=sig_cols)
    _csv(sig_frame[[*sig_cols, *[c for c in sig_frame.columns if c not in sig_cols]]], out["significance"])

    patterns = pattern_metrics(runs, res.thresholds, tasks)
    _csv(patterns, out["patterns_csv"])
    write_text_atomic(out["patterns_md"], patterns_markdown(patterns, seeds))
    if figures_done:
        figures_done()
    log.info("tables: %d runs, %d metric rows, %d paper tables in %.1fs", len(runs), len(res.metrics), len(tables),
             time.perf_counter() - t0)
