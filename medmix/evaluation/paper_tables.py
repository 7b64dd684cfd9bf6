"""The paper's tables (1, 2, E2, E3, E4, E5, E7, E8) from per-seed metrics, as Markdown, LaTeX and CSV,
and the one list of every table the tables job writes (:func:`register_table`; Table E6 is
:mod:`medmix.evaluation.efficiency_table`'s; a new table is a module in ``extra_tables/``).

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

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medmix.metrics.classification import METRICS, MF1_DEFINITION
from medmix.table_text import latex_escape, latex_table, markdown_table

HEADERS = {"auroc": "AUROC", "auprc": "AUPRC", "mf1": "mF1", "acc": "Acc"}
REFERENCE = "medmix"  # the paper's model: significance tests compare it against the best other method
#: Marks an improvement beyond the paper in the tables (its own named row, never the paper's name).
BEYOND_MARK = "†"
BEYOND_NOTE = (f"{BEYOND_MARK} Beyond the paper: an improvement registered under its own name, not the paper's "
               "MedMIX (README, methods).")

#: Every table the tables job writes (``results/tables/<name>.<md|tex|csv>``), in order: the one list
#: the workflow's outputs and the job derive from (:func:`register_table`, :func:`table_specs`).
TABLES: dict[str, TableSpec] = {}
#: Each table's title, and the setting that produces its rows (an empty table's note); filled by
#: :func:`register_table`.
TITLES: dict[str, str] = {}
HOW: dict[str, str] = {}
#: The package whose modules :func:`table_specs` imports first: a new table is one module there.
EXTRA_TABLES = "medmix.evaluation.extra_tables"
_DISCOVERED = False


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


@dataclass(frozen=True)
class TableView:
    """What every table's rows are selected from: per-seed macro ``metrics`` and per-label
    ``label_metrics``, the configured ``protocols``, the datasets' ``tasks`` and the ablation runs."""

    metrics: pd.DataFrame
    label_metrics: pd.DataFrame
    protocols: dict[str, dict[str, Any]]
    tasks: dict[str, str]
    ablation: frozenset[str]

    @property
    def test(self) -> pd.DataFrame:
        return self.metrics[self.metrics.eval_set == "test"]

    @property
    def clean(self) -> pd.DataFrame:
        """The clean test split's rows (no train- or test-time protocol)."""
        test = self.test
        return test[(test.train_protocol == "none") & (test.test_protocol == "none")]

    def main_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` without the MedMIX ablation runs (Table E7's own rows)."""
        return frame[~frame.method.isin(self.ablation)]


#: A table's builder: its per-seed rows (the metrics' columns plus the block's) and its block columns
#: (the columns that define a group of compared rows, ``dataset`` first).
Builder = Callable[[TableView], tuple[pd.DataFrame, list[str]]]


@dataclass(frozen=True)
class TableSpec:
    """One table: name, title, the setting that produces its rows, and its builder (None: Table E6,
    written from the cost records by :mod:`medmix.evaluation.efficiency_table`)."""

    name: str
    title: str
    how: str
    build: Builder | None = None


def register_table(name: str, *, title: str, how: str, build: Builder | None = None) -> None:
    """Add table ``name``: the tables job writes ``results/tables/<name>.<md|tex|csv>`` from
    ``build``'s rows with the paper tables' layout (mean ± std over seeds, best in bold, significance)."""
    if name in TABLES:
        raise ValueError(f"table {name!r} is registered twice")
    TABLES[name] = TableSpec(name, title, how, build)
    TITLES[name], HOW[name] = title, how


def table_specs() -> list[TableSpec]:
    """Every registered table, in order (the modules of :data:`EXTRA_TABLES` imported first)."""
    global _DISCOVERED
    if not _DISCOVERED:
        package = importlib.import_module(EXTRA_TABLES)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            importlib.import_module(f"{EXTRA_TABLES}.{info.name}")
        _DISCOVERED = True
    return list(TABLES.values())


def table_modules() -> list[str]:
    """The modules whose builders the tables job runs (its code beyond its own imports)."""
    return sorted({spec.build.__module__ for spec in table_specs() if spec.build is not None})


# -- the paper's tables ----------------------------------------------------------------------------
register_table("table1", title="Table 1: in-domain results (natural missingness, clean test split)",
               how="list runs in `methods` (the clean protocol `none` is always run)",
               build=lambda view: (view.main_rows(view.clean), ["dataset"]))


def _external(view: TableView) -> tuple[pd.DataFrame, list[str]]:
    metrics = view.metrics
    ext = metrics[metrics.eval_set.str.startswith("external:") & (metrics.train_protocol == "none")
                  & (metrics.test_protocol == "none")]
    ext = view.main_rows(ext).assign(cohort=lambda f: f.eval_set.str.removeprefix("external:"))
    return ext, ["dataset", "cohort"]


register_table("table2", title=("Table 2: external validation (trained on the development dataset, thresholds "
                                "from its validation split)"),
               how="declare external cohorts in `datasets.<dataset>.external`", build=_external)


def _protocol_table(side: str, kind: str) -> Builder:
    """A protocol table: ``kind`` protocols of ``protocols.<side>``, the other side clean."""

    def build(view: TableView) -> tuple[pd.DataFrame, list[str]]:
        cond = _protocol_conditions(view.protocols.get(side) or {}, kind)
        other = "test_protocol" if side == "train" else "train_protocol"
        test = view.test
        part = view.main_rows(test[test[other] == "none"])
        part = part.merge(cond, left_on=f"{side}_protocol", right_on="protocol").drop(columns="protocol")
        extra = ["rate", "modality"] if kind == "drop_one" else ["rate"]
        return part, ["dataset", *extra]

    return build


for _name, _side, _kind, _title in (
    ("tableE2", "train", "drop_one", "Table E2: train-time one-modality drop (clean test split)"),
    ("tableE3", "test", "drop_one", "Table E3: test-time one-modality drop (model trained clean)"),
    ("tableE4", "train", "random_drop", "Table E4: train-time multi-random drop (clean test split)"),
    ("tableE5", "test", "random_drop", "Table E5: test-time multi-random drop (model trained clean)"),
):
    register_table(_name, title=_title, build=_protocol_table(_side, _kind),
                   how=f"add `kind: {_kind}` protocols to `protocols.{_side}` (e.g. `--configfile "
                       "config/paper_protocols.yaml`)")
register_table("tableE6", title=("Table E6: efficiency (deployed parameters, inference FLOPs, peak memory; "
                                 "clean test Perf)"),
               how="list runs in `methods` (Table 1's rows are the table's rows)")  # efficiency_table writes it


def _ablations(view: TableView) -> tuple[pd.DataFrame, list[str]]:
    clean = view.clean
    e7 = clean[clean.method.isin(view.ablation | {REFERENCE})]
    return (e7 if e7.method.isin(view.ablation).any() else e7.iloc[0:0]), ["dataset"]


register_table("tableE7", title="Table E7: structural ablations (clean test split)", build=_ablations,
               how="list MedMIX ablations in `methods` (e.g. `medmix_nodistill`, variants of `medmix` in `variants`)")


def _per_label(view: TableView) -> tuple[pd.DataFrame, list[str]]:
    label_metrics = view.label_metrics
    lm = label_metrics[(label_metrics.eval_set == "test") & (label_metrics.train_protocol == "none")
                       & (label_metrics.test_protocol == "none")] if len(label_metrics) else label_metrics
    if len(lm):
        lm = view.main_rows(lm[lm.dataset.map(lambda d: view.tasks.get(d) in ("multitask", "multilabel"))])
    return lm, ["dataset", "label"]


register_table("tableE8", title=("Table E8: per-task results (clean test split, per-task thresholds tuned on "
                                 "validation)"),
               how="a development dataset with task `multitask` or `multilabel`", build=_per_label)
#: The paper's tables built here (Table E6 is the efficiency table's).
PAPER_TABLES = tuple(name for name, spec in TABLES.items() if spec.build is not None)


def build_tables(metrics: pd.DataFrame, label_metrics: pd.DataFrame, protocols: dict[str, dict[str, Any]],
                 run_methods: dict[str, str], tasks: dict[str, str],
                 dataset_order: Sequence[str] | None = None,
                 improvements: frozenset[str] | None = None) -> dict[str, PaperTable]:
    """Every registered table with a builder, from per-seed ``metrics`` (macro) and ``label_metrics``
    (per label).

    Rows: datasets in ``dataset_order`` (default: ``tasks``' order), runs in ``run_methods``' order
    with the paper's MedMIX after the other methods (the paper's layout) and the improvements beyond
    the paper (``improvements``, default :func:`improvement_runs`) last, marked.
    """
    improvements = improvement_runs(run_methods) if improvements is None else frozenset(improvements)
    runs = ([r for r in run_methods if r != REFERENCE and r not in improvements]
            + [r for r in run_methods if r == REFERENCE]
            + [r for r in run_methods if r in improvements])
    order = {r: i for i, r in enumerate(runs)}
    ablation = frozenset(r for r, m in run_methods.items() if is_ablation(r, m, improvements))
    view = TableView(metrics, label_metrics, protocols, tasks, ablation)
    out: dict[str, PaperTable] = {}
    for spec in table_specs():
        if spec.build is not None:
            frame, block = spec.build(view)
            out[spec.name] = PaperTable(spec.name, frame, block)
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
