"""Table E6 (efficiency) from the measured cost records and the experts' declared costs.

Per (development dataset, run) of Table 1: the fusion model's cost as the dataset's evaluate job
measured it on the fitted model (``results/costs/<dataset>[_<k>].json``;
:mod:`medmix.pipeline.efficiency`) plus the deployed expert feature extractors' declared cost
(the committee members the run reads; the RAG stage is cached and the teachers train only, so
both are excluded; a ``large_ref_<modality>`` run deploys that teacher).

* Params: fusion + each distinct deployed expert once.
* FLOPs per sample: fusion + each (modality, expert) the run reads (``gbdt`` counts comparisons).
* Peak memory: the fusion predict's peak + the experts' weights at 4 bytes per parameter (the
  experts' activations are not counted, so the total is a lower bound of a deployment's peak).
* Perf = (AUROC + AUPRC + mF1 + Acc) / 4 (Table 1's clean test means); EffScore = (Perf / Perf₀) /
  Cost, Cost the geometric mean of the three total-cost ratios to MedMIX on the same dataset.

A total built on an expert whose cost is not declared is a lower bound, shown "≥"; an EffScore
built on one is shown "≈". Pure functions (no torch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmix.evaluation.paper_tables import HOW, REFERENCE, TITLES, PaperTable, summarise
from medmix.metrics.classification import METRICS
from medmix.table_text import latex_escape, latex_table, markdown_table

TITLE = TITLES["tableE6"]
EXPERT_BYTES_PER_PARAM = 4
COSTS = ("params", "flops", "mem")
#: Display columns: (header, cost, part, scale).
COLUMNS = [("Params (M) fusion", "params", "fusion", 1e6), ("Params (M) total", "params", "total", 1e6),
           ("FLOPs (M)/sample fusion", "flops", "fusion", 1e6), ("FLOPs (M)/sample total", "flops", "total", 1e6),
           ("Peak Mem (MB) fusion", "mem", "fusion", 2**20), ("Peak Mem (MB) total", "mem", "total", 2**20)]


def deployed_experts(committee: Mapping[str, Mapping[str, Any]], method: str) -> list[tuple[str, str]]:
    """(modality, expert) pairs a run deploys, from its committee spec (modality -> ``committee``
    [[name, role], ...] and ``teacher``): the committee members less the RAG stage (cached, not
    deployed) and not the teachers (training only); ``large_ref_<modality>`` deploys that teacher."""
    if method.startswith("large_ref_"):
        mod = method.removeprefix("large_ref_")
        teacher = (committee.get(mod) or {}).get("teacher")
        return [(mod, teacher)] if teacher else []
    return [(mod, name) for mod, spec in committee.items() for name, role in spec["committee"] if role != "rag"]


def read_costs(files: Sequence[str]) -> dict[tuple[str, str], dict[str, Any] | None]:
    """(dataset, run) -> its cost record, from the evaluate jobs' cost files (``{"dataset", "costs"}``)."""
    out: dict[tuple[str, str], dict[str, Any] | None] = {}
    for f in files:
        doc = json.loads(Path(f).read_text())
        out.update({(doc["dataset"], run): record for run, record in doc["costs"].items()})
    return out


def expert_totals(experts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Declared params (distinct experts), FLOPs (every modality use) and weight bytes of deployed experts."""
    by_name = {e["name"]: e for e in experts}
    params = [e["params"] for e in by_name.values()]
    flops = [e["flops_per_sample"] for e in experts]
    return {
        "params": float(sum(p for p in params if p is not None)),
        "flops": float(sum(f for f in flops if f is not None)),
        "mem": float(EXPERT_BYTES_PER_PARAM * sum(p for p in params if p is not None)),
        "params_undeclared": sorted(n for n, e in by_name.items() if e["params"] is None),
        "flops_undeclared": sorted({e["name"] for e in experts if e["flops_per_sample"] is None}),
    }


def perf_frame(table1: PaperTable) -> pd.DataFrame:
    """dataset, method, perf: the mean over AUROC, AUPRC, mF1 and Acc of Table 1's seed means."""
    s = summarise(table1)
    if s.empty:
        return pd.DataFrame(columns=["dataset", "method", "perf"])
    return s.assign(perf=s[[f"{m}_mean" for m in METRICS]].mean(axis=1))[["dataset", "method", "perf"]]


def efficiency_frame(table1: PaperTable, fit_costs: Mapping[tuple[str, str], dict[str, Any] | None],
                     experts: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> pd.DataFrame:
    """One row per Table 1 (dataset, method): fusion / expert / total costs, Perf and EffScore."""
    rows = []
    for _, r in perf_frame(table1).iterrows():
        cost = fit_costs.get((r.dataset, r.method)) or {}
        ex = expert_totals(experts.get(r.dataset, {}).get(r.method, []))
        fusion = {"params": cost.get("params"), "flops": cost.get("flops_per_sample"),
                  "mem": cost.get("peak_mem_bytes")}
        row: dict[str, Any] = {"dataset": r.dataset, "method": r.method, "perf": float(r.perf),
                               "flops_kind": cost.get("flops_kind", ""), "device": cost.get("device", ""),
                               "batch_size": cost.get("batch_size")}
        for c in COSTS:
            f = np.nan if fusion[c] is None else float(fusion[c])
            row.update({f"{c}_fusion": f, f"{c}_experts": ex[c], f"{c}_total": f + ex[c]})
        row["params_lower_bound"] = bool(ex["params_undeclared"])
        row["mem_lower_bound"] = bool(ex["params_undeclared"])
        row["flops_lower_bound"] = bool(ex["flops_undeclared"])
        row["undeclared"] = ", ".join(sorted({*ex["params_undeclared"], *ex["flops_undeclared"]}))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return add_effscore(frame) if len(frame) else frame


def add_effscore(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: the cost ratios to the MedMIX row, Cost (their geometric mean) and EffScore (NaN without MedMIX)."""
    out = []
    for _, part in frame.groupby("dataset", sort=False):
        part = part.copy()
        ref = part[part.method == REFERENCE]
        for c in COSTS:
            base = float(ref[f"{c}_total"].iloc[0]) if len(ref) else np.nan
            part[f"{c}_ratio"] = part[f"{c}_total"] / base if base > 0 else np.nan
        part["cost"] = np.cbrt(part.params_ratio * part.flops_ratio * part.mem_ratio)
        perf0 = float(ref.perf.iloc[0]) if len(ref) else np.nan
        part["effscore"] = (part.perf / perf0) / part.cost
        bound = part[[f"{c}_lower_bound" for c in COSTS]].any(axis=1)
        ref_bound = bool(bound[ref.index].any()) if len(ref) else False
        part["effscore_approx"] = (bound | ref_bound) & (part.method != REFERENCE)  # MedMIX's is 1 by definition
        out.append(part)
    return pd.concat(out)


def _num(value: float, scale: float, bound: bool) -> str:
    if not np.isfinite(value):
        return "n/a"
    return ("≥ " if bound else "") + f"{value / scale:.4g}"


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        row = {"dataset": r.dataset, "method": r.method}
        for header, c, part, scale in COLUMNS:
            row[header] = _num(r[f"{c}_{part}"], scale, part == "total" and bool(r[f"{c}_lower_bound"]))
        row["Perf"] = f"{r.perf:.4f}"
        eff = r.effscore
        row["EffScore"] = "n/a" if not np.isfinite(eff) else ("≈ " if r.effscore_approx else "") + f"{eff:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def notes(frame: pd.DataFrame) -> list[str]:
    """The table's notes: definitions, what is excluded and which experts' costs are not declared."""
    out = [
        "Perf = (AUROC + AUPRC + mF1 + Acc) / 4 (Table 1, clean test split, mean over seeds). EffScore = "
        "(Perf / Perf_MedMIX) / Cost, Cost = geometric mean of the total params, FLOPs and peak-memory ratios to "
        "MedMIX on the same dataset (EffScore of MedMIX = 1).",
        "Fusion: one seed's fitted model as the evaluate job measured it (a batch of the validation split; "
        "params = elements "
        "of one seed's state; FLOPs = torch FlopCounterMode, matrix products only; memory = one seed's state + the "
        "batch + the predict's peak: CUDA allocator peak, or on the CPU the peak of live tensor storage / numpy "
        "buffers). Total = fusion + the deployed expert feature extractors' declared cost (registry "
        "`ExpertSpec.params` / `flops_per_sample`, sources in `cost_note`); expert memory = their weights at 4 "
        "bytes per parameter (their activations are not counted). The RAG stage (cached) and the teachers "
        "(training only) are excluded; `large_ref_<modality>` deploys its teacher.",
    ]
    if len(frame) and (frame.flops_kind == "comparisons").any():
        out.append("gbdt's fusion FLOPs are threshold comparisons plus one leaf-value addition per tree (mean per "
                   "validation sample), not floating-point multiply-adds.")
    for dataset, part in frame.groupby("dataset", sort=False) if len(frame) else []:
        if not (part.method == REFERENCE).any():
            out.append(f"{dataset}: no `{REFERENCE}` run is configured, so no EffScore (list it in `methods`).")
        measured = part[part.params_fusion.notna()]
        if len(measured):
            where = ", ".join(sorted({f"{r.device} (batch {r.batch_size})" for r in measured.itertuples()}))
            out.append(f"{dataset}: fusion costs measured on {where}.")
        missing = part[part.params_fusion.isna()].method.tolist()
        if missing:
            out.append(f"{dataset}: no cost record from its evaluate job for {', '.join(missing)} "
                       "(rerun the dataset's evaluate job to measure).")
        undeclared = sorted({n for u in part.undeclared for n in u.split(", ") if n})
        if undeclared:
            out.append(f"{dataset}: cost not declared (totals marked ≥ are lower bounds, EffScores marked ≈ use "
                       f"them) for the experts {', '.join(undeclared)}.")
    return out


def to_markdown(frame: pd.DataFrame) -> str:
    lines = [f"# {TITLE}", ""]
    if frame.empty:
        return "\n".join([*lines, f"Not configured: {HOW['tableE6']}.", ""])
    return "\n".join([*lines, markdown_table(display_frame(frame)), "", *[f"- {n}" for n in notes(frame)], ""])


def to_latex(frame: pd.DataFrame) -> str:
    if frame.empty:
        return f"% {latex_escape(TITLE)}\n% Not configured: list runs in `methods`.\n"
    shown = display_frame(frame)
    return latex_table(shown, f"{TITLE}. {' '.join(notes(frame))}", "ll" + "r" * (len(shown.columns) - 2))


def to_csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if len(frame) else pd.DataFrame({"note": ["Not configured: list runs in `methods`."]})
