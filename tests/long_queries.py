"""The long retrieval query set of issue 18 (``tests/data/rag_long_queries.json``) and its hit rates.

Each query is long (reports: a ~250-word normal-findings preamble, then the decisive finding and
impression; EHR rows: :func:`extractors.knowledge.bridge.serialise_ehr` over 41 routine
PhysioNet-style variables with seeded values, then five text variables that carry the decision),
so the decisive content lies beyond the first 64 / 256 word pieces. Used by
``tests/test_rag_long_queries.py`` and ``tests/benchmarks/bench_rag_long_queries.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

QUERY_FILE = Path(__file__).resolve().parent / "data" / "rag_long_queries.json"
ROUTINE_RANGES = {  # (low, high) of the seeded routine values; everything unremarkable
    "Age": (40, 85), "Gender": (0, 1), "Height": (150, 190), "Weight": (55, 110), "ICUType": (1, 4),
    "HR": (60, 100), "NIDiasABP": (55, 85), "NISysABP": (100, 140), "NIMAP": (70, 100), "DiasABP": (55, 85),
    "SysABP": (100, 140), "MAP": (70, 100), "Temp": (36.2, 37.6), "RespRate": (12, 20), "SaO2": (94, 99),
    "FiO2": (0.21, 0.5), "PaO2": (80, 110), "PaCO2": (35, 45), "pH": (7.35, 7.45), "HCO3": (22, 27),
    "GCS": (13, 15), "Urine": (40, 200), "BUN": (8, 25), "Creatinine": (0.6, 1.3), "Glucose": (80, 140),
    "Na": (135, 145), "K": (3.5, 5.0), "Mg": (1.7, 2.3), "HCT": (36, 46), "WBC": (4, 11), "Platelets": (150, 400),
    "Albumin": (3.4, 4.8), "ALP": (40, 120), "ALT": (10, 40), "AST": (10, 40), "Bilirubin": (0.2, 1.1),
    "Cholesterol": (130, 220), "Lactate": (0.6, 1.8), "TroponinI": (0.0, 0.03), "TroponinT": (0.0, 0.01),
    "MechVent": (0, 1),
}


def load_queries() -> list[dict]:
    """``[{"type": "report"|"ehr", "query": str, "expected": [titles]}]`` in file order."""
    import pandas as pd

    from extractors.knowledge.bridge import serialise_ehr

    spec = json.loads(QUERY_FILE.read_text(encoding="utf-8"))
    out = [{"type": "report", "query": f"{spec['report_preambles'][r['preamble']]} {r['findings']}",
            "expected": list(r["expected"])} for r in spec["reports"]]
    routine, text_vars = spec["ehr_routine_variables"], spec["ehr_text_variables"]
    for k, row in enumerate(spec["ehr"]):
        rng = np.random.default_rng(k)
        values: dict[str, object] = {}
        for name in routine:
            lo, hi = ROUTINE_RANGES[name]
            values[name] = None if rng.random() < 0.15 else round(float(rng.uniform(lo, hi)), 2)
        values.update(dict(zip(text_vars, row["text"], strict=True)))
        frame = pd.DataFrame({n: [v] for n, v in values.items()})
        out.append({"type": "ehr", "query": serialise_ehr(frame), "expected": list(row["expected"])})
    return out


def hit_rates(titles: list[str], idx: np.ndarray, queries: list[dict]) -> dict[str, dict[str, float]]:
    """Top-1 / top-5 hit rates per query type and overall (a hit: an expected title is retrieved)."""
    groups: dict[str, list[tuple[bool, bool]]] = {"report": [], "ehr": [], "all": []}
    for row, q in zip(idx, queries, strict=True):
        got = [titles[j] for j in row]
        hit = (got[0] in q["expected"], any(t in q["expected"] for t in got[:5]))
        groups[q["type"]].append(hit)
        groups["all"].append(hit)
    return {g: {"n": len(h), "top1": float(np.mean([a for a, _ in h])), "top5": float(np.mean([b for _, b in h]))}
            for g, h in groups.items()}
