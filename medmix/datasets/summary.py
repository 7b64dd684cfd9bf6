"""Per-dataset summary: split sizes, label prevalence, modality availability, absent and unusable files.

``write_summary(cohort, json_path, md_path)`` writes the same content as JSON (for programs) and
Markdown (for people), both atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmix.cohort import INPUT_PREFIX, LABEL_PREFIX, SPLITS, Cohort
from medmix.store.atomic import write_text_atomic
from medmix.table_text import markdown_table

NO_MODALITY = "(none)"
MD_LISTED_FILES = 20
GROUPS = ("all", *SPLITS)


def summarize(cohort: Cohort) -> dict[str, Any]:
    """The summary of a cohort as a JSON-ready dict."""
    frame = cohort.frame
    groups = {"all": frame, **{s: frame[frame["split"] == s] for s in SPLITS}}
    mods = list(cohort.modalities)
    available = pd.DataFrame({m: frame[INPUT_PREFIX + m].notna() for m in mods}, index=frame.index)
    absent = {m: dict(v) for m, v in (cohort.extra.get("absent_files") or {}).items() if v}

    splits = {g: {"samples": int(len(f)), "patients": int(f["patient_id"].nunique())} for g, f in groups.items()}
    prevalence: dict[str, dict[str, dict[str, Any]]] = {}
    for label in cohort.labels:
        prevalence[label] = {}
        for g, f in groups.items():
            col = f[LABEL_PREFIX + label]
            known, positive = int(col.notna().sum()), int((col == 1).sum())
            prevalence[label][g] = {
                "positive": positive,
                "known": known,
                "prevalence": round(positive / known, 4) if known else None,
            }
    availability: dict[str, dict[str, dict[str, Any]]] = {}
    for m in mods:
        availability[m] = {}
        absent_ids = set(absent.get(m, {}))
        for g, f in groups.items():
            n_avail = int(available.loc[f.index, m].sum())
            n_absent = int(f["sample_id"].isin(absent_ids).sum())
            availability[m][g] = {
                "available": n_avail,
                "missing": int(len(f)) - n_avail,
                "absent_files": n_absent,
                "fraction": round(n_avail / len(f), 4) if len(f) else None,
            }
    joined = pd.Series("", index=frame.index, dtype=object)
    for m in mods:
        joined = joined + np.where(available[m].to_numpy(), m + "+", "")
    pattern_of = joined.str.rstrip("+").replace("", NO_MODALITY)
    patterns: dict[str, dict[str, int]] = {}
    for g, f in groups.items():
        counts = pattern_of.loc[f.index].value_counts()
        patterns[g] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
    return {
        "dataset": cohort.name,
        "task": cohort.task,
        "labels": list(cohort.labels),
        "modalities": dict(cohort.modalities),
        "n_samples": int(len(frame)),
        "n_patients": int(frame["patient_id"].nunique()),
        "splits": splits,
        "label_prevalence": prevalence,
        "modality_availability": availability,
        "availability_patterns": patterns,
        "absent_files": {
            m: {"count": len(files), "files": [{"sample_id": s, "path": p} for s, p in files.items()]}
            for m, files in absent.items()
        },
        "unusable_files": {
            m: {"count": len(files), "files": [{"sample_id": s, "reason": r} for s, r in files.items()]}
            for m, files in (cohort.extra.get("unusable_files") or {}).items() if files
        },
        "notes": {k: v for k, v in cohort.extra.items() if k not in ("absent_files", "unusable_files")},
        "input_schema": dict(cohort.schemas),
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary rendered as a Markdown report."""
    s = summary
    lines = [
        f"# Dataset summary: {s['dataset']}",
        "",
        f"Task: {s['task']}; {s['n_samples']} samples from {s['n_patients']} patients; "
        f"{len(s['labels'])} label(s); modalities: "
        + ", ".join(f"{m} ({k})" for m, k in s["modalities"].items())
        + ".",
        "",
        "## Samples per split",
        "",
        _table("split", {g: [s["splits"][g]["samples"], s["splits"][g]["patients"]] for g in GROUPS},
               ["samples", "patients"]),
        "",
        "## Label prevalence (positives / known labels)",
        "",
        _table("label", {label: [_prevalence_cell(per[g]) for g in GROUPS]
                         for label, per in s["label_prevalence"].items()}),
        "",
        "## Modality availability (available / samples; absent files in brackets)",
        "",
        _table("modality", {mod: [_availability_cell(per[g], s["splits"][g]["samples"]) for g in GROUPS]
                            for mod, per in s["modality_availability"].items()}),
        "",
        "## Availability patterns (modalities present together)",
        "",
        _table("pattern", {p: [s["availability_patterns"][g].get(p, 0) for g in GROUPS]
                           for p in s["availability_patterns"]["all"]}),
    ]
    lines += ["", "## Absent and unusable files", ""]
    if not s["absent_files"]:
        lines.append("No referenced file is absent.")
    for mod, info in s["absent_files"].items():
        lines.append(f"- **{mod}**: {info['count']} referenced file(s) do not exist (counted as missing).")
        for item in info["files"][:MD_LISTED_FILES]:
            lines.append(f"  - `{item['sample_id']}`: `{item['path']}`")
        if info["count"] > MD_LISTED_FILES:
            lines.append(f"  - ... and {info['count'] - MD_LISTED_FILES} more (all listed in the JSON summary)")
    for mod, info in (s.get("unusable_files") or {}).items():
        lines.append(f"- **{mod}**: {info['count']} file(s) exist but cannot be used (counted as missing).")
        for item in info["files"][:MD_LISTED_FILES]:
            lines.append(f"  - `{item['sample_id']}`: {item['reason']}")
        if info["count"] > MD_LISTED_FILES:
            lines.append(f"  - ... and {info['count'] - MD_LISTED_FILES} more (all listed in the JSON summary)")
    schemas = s.get("input_schema") or {}
    if schemas:
        lines += ["", "## Input schemas (what the experts read)", ""]
        for mod, schema in schemas.items():
            parts = []
            if schema.get("variables"):
                names = schema["variables"]
                parts.append(f"{len(names)} variables ({schema.get('source', 'declared')}): "
                             + ", ".join(names[:MD_LISTED_FILES]) + (" ..." if len(names) > MD_LISTED_FILES else ""))
            if schema.get("columns"):
                parts.append("columns " + ", ".join(schema["columns"]))
            for col, cats in (schema.get("categorical") or {}).items():
                parts.append(f"{col}: categories {cats} (training rows)")
            if schema.get("from"):
                parts.append(f"taken from {schema['from']}")
            lines.append(f"- **{mod}**: " + "; ".join(parts))
    notes = s.get("notes") or {}
    if notes:
        lines += ["", "## Notes", ""]
        for key, value in notes.items():
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                text = "; ".join(value)
            else:
                text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"- {key}: {text}")
    return "\n".join(lines) + "\n"


def write_summary(cohort: Cohort, json_path: str | Path, md_path: str | Path) -> dict[str, Any]:
    """Write the cohort's summary as JSON and Markdown (atomic writes); returns the summary."""
    summary = summarize(cohort)
    write_text_atomic(json_path, json.dumps(summary, indent=2) + "\n")
    write_text_atomic(md_path, summary_markdown(summary))
    return summary


def _table(first: str, rows: dict[str, list[Any]], columns: Sequence[str] = GROUPS) -> str:
    """A Markdown table: one row per key (in column ``first``), its cells under ``columns``."""
    return markdown_table(pd.DataFrame([[key, *cells] for key, cells in rows.items()], columns=[first, *columns]))


def _prevalence_cell(cell: dict[str, Any]) -> str:
    if not cell["known"]:
        return "-"
    return f"{cell['positive']}/{cell['known']} ({100 * cell['prevalence']:.1f}%)"


def _availability_cell(cell: dict[str, Any], n: int) -> str:
    if not n:
        return "-"
    text = f"{cell['available']}/{n} ({100 * cell['fraction']:.1f}%)"
    return text + (f" [{cell['absent_files']}]" if cell["absent_files"] else "")
