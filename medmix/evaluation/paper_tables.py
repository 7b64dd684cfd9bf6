"""The paper's tables (1, 2, E2, E3, E4, E5, E7, E8) from per-seed metrics, as Markdown, LaTeX and CSV.

Which rows a table holds follows from the configured protocols (``protocols.train`` /
``protocols.test``: kind ``none``, ``drop_one`` or ``random_drop``) and runs (config ``methods``).
``medmix`` is the paper's model. A run whose method is registered as an improvement beyond the
paper (``FusionMethod.beyond_paper``, e.g. ``medmix_stacked``) is its own row of every table,
marked :data:`BEYOND_MARK`; any other run of ``medmix`` / ``medmix_*`` is an ablation of Table E7
and is left out of the comparison tables. A table with no rows is written
with a one-line note naming the setting that produces it. Within each block of rows that compare
methods under the same condition, the best mean per metric is bold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medmix.metrics.classification import METRICS, MF1_DEFINITION
from medmix.table_text import latex_escape, latex_table, markdown_table

PAPER_TABLES = ("table1", "table2", "tableE2", "tableE3", "tableE4", "tableE5", "tableE7", "tableE8")
HEADERS = {"auroc": "AUROC", "auprc": "AUPRC", "mf1": "mF1", "acc": "Acc"}
REFERENCE = "medmix"  # the paper's model: significance tests compare it against the best other method
#: Marks an improvement beyond the paper in the tables (its own named row, never the paper's name).
BEYOND_MARK = "†"
BEYOND_NOTE = (f"{BEYOND_MARK} Beyond the paper: an improvement registered under its own name, not the paper's "
               "MedMIX (README, methods).")

TITLES = {
    "table1": "Table 1: in-domain results (natural missingness, clean test split)",
    "table2": "Table 2: external validation (trained on the development dataset, thresholds from its validation split)",
    "tableE2": "Table E2: train-time one-modality drop (clean test split)",
    "tableE3": "Table E3: test-time one-modality drop (model trained clean)",
    "tableE4": "Table E4: train-time multi-random drop (clean test split)",
    "tableE5": "Table E5: test-time multi-random drop (model trained clean)",
    "tableE7": "Table E7: structural ablations (clean test split)",
    "tableE8": "Table E8: per-task results (clean test split, per-task thresholds tuned on validation)",
}
#: The setting that produces an empty table's rows.
HOW = {
    "table1": "list runs in `methods` (the clean protocol `none` is always run)",
    "table2": "declare external cohorts in `datasets.<dataset>.external`",
    "tableE2": "add `kind: drop_one` protocols to `protocols.train` (e.g. `--configfile config/paper_protocols.yaml`)",
    "tableE3": "add `kind: drop_one` protocols to `protocols.test` (e.g. `--configfile config/paper_protocols.yaml`)",
    "tableE4": "add `kind: random_drop` protocols to `protocols.train` (e.g. `--configfile config/paper_protocols.yaml`)",
    "tableE5": "add `kind: random_drop` protocols to `protocols.test` (e.g. `--configfile config/paper_protocols.yaml`)",
    "tableE7": "list MedMIX ablations in `methods` (e.g. `medmix_nodistill`, variants of `medmix` in `variants`)",
    "tableE8": "a development dataset with task `multitask` or `multilabel`",
}


def improvement_runs(run_methods: dict[str, str]) -> frozenset[str]:
    """The runs whose registered method is an improvement beyond the paper (``beyond_paper``)."""
    from medmix.methods import get_method_class

    return frozenset(r for r, m in run_methods.items() if getattr(get_method_class(m), "beyond_paper", False))


def is_ablation(run: str, method: str, improvements: frozenset[str] = frozenset()) -> bool:
    """A MedMIX ablation row (Table E7): a run of ``medmix``/``medmix_*`` other than ``medmix`` itself
    and other than an improvement beyond the paper."""
    if run == REFERENCE or run in improvements:
        return False
    return method == REFERENCE or method.startswith(REFERENCE + "_") or run.startswith(REFERENCE + "_")


@dataclass
class PaperTable:
    """One table: per-seed rows (``frame``), the columns that define a block and the extra condition columns."""

    name: str
    frame: pd.DataFrame
    block: list[str]
    notes: list[str] = field(default_factory=list)
    #: Runs shown with :data:`BEYOND_MARK` (improvements beyond the paper).
    marked: frozenset[str] = frozenset()

    @property
    def title(self) -> str:
        return TITLES[self.name]


def _protocol_conditions(specs: dict[str, dict[str, Any]], kind: str) -> pd.DataFrame:
    rows = [{"protocol": name, "rate": float(s["p"]), **({"modality": s["modality"]} if kind == "drop_one" else {})}
            for name, s in specs.items() if s.get("kind") == kind]
    cols = ["protocol", "rate", *(["modality"] if kind == "drop_one" else [])]
    return pd.DataFrame(rows, columns=cols)


def build_tables(metrics: pd.DataFrame, label_metrics: pd.DataFrame, protocols: dict[str, dict[str, Any]],
                 run_methods: dict[str, str], tasks: dict[str, str],
                 dataset_order: Sequence[str] | None = None,
                 improvements: frozenset[str] | None = None) -> dict[str, PaperTable]:
    """Every paper table from per-seed ``metrics`` (macro) and ``label_metrics`` (per label).

    Rows: datasets in ``dataset_order`` (default: ``tasks``' order), runs in ``run_methods``' order
    with the paper's MedMIX after the other methods (the paper's layout) and the improvements beyond
    the paper (``improvements``, default :func:`improvement_runs`) last, marked.
    """
    improvements = improvement_runs(run_methods) if improvements is None else frozenset(improvements)
    runs = ([r for r in run_methods if r != REFERENCE and r not in improvements] + [r for r in run_methods if r == REFERENCE]
            + [r for r in run_methods if r in improvements])
    order = {r: i for i, r in enumerate(runs)}
    ablation = {r for r, m in run_methods.items() if is_ablation(r, m, improvements)}
    test = metrics[metrics.eval_set == "test"]
    clean = test[(test.train_protocol == "none") & (test.test_protocol == "none")]
    main_rows = lambda f: f[~f.method.isin(ablation)]  # noqa: E731
    out: dict[str, PaperTable] = {}
    out["table1"] = PaperTable("table1", main_rows(clean), ["dataset"])
    ext = metrics[metrics.eval_set.str.startswith("external:") & (metrics.train_protocol == "none")
                  & (metrics.test_protocol == "none")]
    ext = main_rows(ext).assign(cohort=lambda f: f.eval_set.str.removeprefix("external:"))
    out["table2"] = PaperTable("table2", ext, ["dataset", "cohort"])
    for name, side, kind in (("tableE2", "train", "drop_one"), ("tableE3", "test", "drop_one"),
                             ("tableE4", "train", "random_drop"), ("tableE5", "test", "random_drop")):
        cond = _protocol_conditions(protocols.get(side) or {}, kind)
        other = "test_protocol" if side == "train" else "train_protocol"
        part = main_rows(test[test[other] == "none"])
        part = part.merge(cond, left_on=f"{side}_protocol", right_on="protocol").drop(columns="protocol")
        extra = ["rate", "modality"] if kind == "drop_one" else ["rate"]
        out[name] = PaperTable(name, part, ["dataset", *extra])
    e7 = clean[clean.method.isin(ablation | {REFERENCE})]
    out["tableE7"] = PaperTable("tableE7", e7 if e7.method.isin(ablation).any() else e7.iloc[0:0], ["dataset"])
    lm = label_metrics[(label_metrics.eval_set == "test") & (label_metrics.train_protocol == "none")
                       & (label_metrics.test_protocol == "none")] if len(label_metrics) else label_metrics
    if len(lm):
        lm = main_rows(lm[lm.dataset.map(lambda d: tasks.get(d) in ("multitask", "multilabel"))])
    out["tableE8"] = PaperTable("tableE8", lm, ["dataset", "label"])
    datasets = {d: i for i, d in enumerate(dataset_order or tasks)}
    for t in out.values():
        t.marked = improvements
        if len(t.frame):
            f = t.frame.assign(_d=t.frame.dataset.map(lambda d: datasets.get(d, len(datasets))),
                               _o=t.frame.method.map(lambda r: order.get(r, len(order))))
            t.frame = f.sort_values(["_d", *t.block[1:], "_o"], kind="stable").drop(columns=["_d", "_o"])
    return out


def summarise(table: PaperTable) -> pd.DataFrame:
    """Mean, std (ddof 1; 0 for one seed) and seed count per block × method, blocks in first-seen order."""
    f = table.frame
    if f.empty:
        return pd.DataFrame(columns=[*table.block, "method", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")],
                                     "seeds"])
    keys = [*table.block, "method"]
    g = f.groupby(keys, sort=False)
    out = g[list(METRICS)].mean().add_suffix("_mean")
    std = g[list(METRICS)].std(ddof=1).fillna(0.0).add_suffix("_std")
    out = out.join(std).join(g["seed"].nunique().rename("seeds")).reset_index()
    return out[[*keys, *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], "seeds"]]


def best_mask(summary: pd.DataFrame, block: Sequence[str]) -> pd.DataFrame:
    """True where a row has the block's best (highest) mean of a metric; ties all bold, NaN never."""
    out = pd.DataFrame(False, index=summary.index, columns=list(METRICS))
    if summary.empty:
        return out
    for m in METRICS:
        col = summary[f"{m}_mean"]
        best = col.groupby([summary[b] for b in block], sort=False).transform("max")
        out[m] = np.isfinite(col) & np.isclose(col, best, rtol=0, atol=5e-5)
    return out


def _cell(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if np.isfinite(mean) else "n/a"


def _display(summary: pd.DataFrame, block: Sequence[str],
             marked: frozenset[str] = frozenset()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table as shown (text cells: block, method, mean ± std per metric, seeds) and where its
    metric cells are bold (:func:`best_mask`), both indexed 0..n-1."""
    best = best_mask(summary, block)
    rows = []
    for _, r in summary.iterrows():
        row = {k: (f"{r[k]:g}" if k == "rate" else str(r[k])) for k in [*block, "method"]}
        if r["method"] in marked:
            row["method"] += f" {BEYOND_MARK}"
        row.update({HEADERS[m]: _cell(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS})
        row["seeds"] = str(int(r["seeds"]))
        rows.append(row)
    bold = pd.DataFrame({HEADERS[m]: best[m].to_numpy(bool) for m in METRICS})
    return pd.DataFrame(rows), bold


def footnote(table: PaperTable, seeds: Sequence[int]) -> str:
    text = (f"Mean ± std over seeds {list(seeds)} (std with ddof 1). {MF1_DEFINITION} Bold: best mean per column "
            f"within each block ({', '.join(table.block)}).")
    if table.marked & set(table.frame.get("method", [])):
        text += " " + BEYOND_NOTE
    return text


def to_markdown(table: PaperTable, seeds: Sequence[int], significance: pd.DataFrame | None = None) -> str:
    lines = [f"# {table.title}", ""]
    summary = summarise(table)
    if summary.empty:
        return "\n".join([*lines, f"Not configured: {HOW[table.name]}.", ""])
    shown, bold = _display(summary, table.block, table.marked)
    for col in bold.columns:
        shown[col] = [f"**{v}**" if b else v for v, b in zip(shown[col], bold[col], strict=True)]
    lines += [markdown_table(shown), "", footnote(table, seeds)]
    if significance is not None and len(significance):
        lines += ["", "Significance (the paper's MedMIX vs the best other method per metric, and each improvement "
                  "beyond the paper vs that method and vs MedMIX; paired t-test across seeds, 95 % bootstrap CI of "
                  "the difference over test samples):", ""]
        lines += [f"- {s}" for s in significance_lines(significance, table.block)]
    lines += [f"- note: {n}" for n in table.notes]
    return "\n".join([*lines, ""])


def significance_lines(sig: pd.DataFrame, block: Sequence[str]) -> list[str]:
    out = []
    for _, r in sig.iterrows():
        where = ", ".join(f"{b} {r[b]:g}" if b == "rate" else f"{b} {r[b]}" for b in block)
        out.append(f"{where}: {HEADERS[r['metric']]}, {r['method']} vs {r['other']}: Δ {r['diff']:+.4f}, "
                   f"p = {r['p_paired']:.3g}, "
                   f"CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
    return out


def to_latex(table: PaperTable, seeds: Sequence[int]) -> str:
    summary = summarise(table)
    if summary.empty:
        return f"% {latex_escape(table.title)}\n% Not configured: {latex_escape(HOW[table.name])}.\n"
    shown, bold = _display(summary, table.block, table.marked)
    return latex_table(shown, f"{table.title}. {footnote(table, seeds)}",
                       "l" * (len(shown.columns) - 5) + "ccccr", bold)


def to_csv_frame(table: PaperTable, significance: pd.DataFrame | None = None) -> pd.DataFrame:
    """Summary rows plus, on the MedMIX row of each block, per metric the best other method, the paired
    p-value and the bootstrap CI of the difference (empty elsewhere)."""
    summary = summarise(table)
    if summary.empty:
        return pd.DataFrame({"note": [f"Not configured: {HOW[table.name]}."]})
    bold = best_mask(summary, table.block)
    for m in METRICS:
        summary[f"{m}_best"] = bold[m]
    if significance is not None and len(significance):
        # One comparison per run and metric: the best other method (an improvement's row vs MedMIX is in
        # significance.csv).
        significance = significance[significance.other != REFERENCE]
        wide = significance.pivot_table(index=[*table.block, "method"], columns="metric", aggfunc="first",
                                        values=["other", "diff", "p_paired", "ci_low", "ci_high"])
        wide.columns = [f"{metric}_{what}" for what, metric in wide.columns]
        summary = summary.merge(wide.reset_index(), on=[*table.block, "method"], how="left")
    per_metric = [f"{m}_{k}" for m in METRICS for k in ("mean", "std", "best", "other", "diff", "p_paired", "ci_low",
                                                         "ci_high")]
    return summary[[*table.block, "method", "seeds", *[c for c in per_metric if c in summary.columns]]]
