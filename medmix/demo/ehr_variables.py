"""The 46 named clinical variables of the demo EHR (hourly vitals, labs, scores)."""

from __future__ import annotations

#: name -> (baseline mean, between-patient sd, within-series noise sd, sampling: "hourly" | hours between labs)
EHR_VARIABLES: dict[str, tuple[float, float, float, object]] = {
    "heart_rate": (85, 10, 4, "hourly"), "sbp": (120, 12, 6, "hourly"), "dbp": (70, 8, 4, "hourly"),
    "map": (85, 8, 4, "hourly"), "resp_rate": (18, 3, 1.5, "hourly"), "spo2": (96, 1.5, 1, "hourly"),
    "temperature": (37.0, 0.4, 0.15, "hourly"), "gcs_total": (14, 1, 0.3, 4), "gcs_eye": (4, 0.3, 0.1, 4),
    "gcs_motor": (6, 0.3, 0.1, 4), "gcs_verbal": (5, 0.4, 0.1, 4), "fio2": (0.3, 0.05, 0.02, 4),
    "peep": (5, 1, 0.3, 4), "urine_output": (80, 20, 15, "hourly"), "cvp": (8, 2, 1, "hourly"),
    "lactate": (1.5, 0.4, 0.2, 6), "ph": (7.40, 0.03, 0.01, 6), "pao2": (95, 12, 5, 6),
    "paco2": (40, 4, 2, 6), "bicarbonate": (24, 2, 0.8, 8), "base_excess": (0, 2, 0.8, 8),
    "sodium": (139, 3, 1, 8), "potassium": (4.1, 0.4, 0.15, 8), "chloride": (103, 3, 1, 8),
    "calcium": (8.9, 0.4, 0.15, 12), "magnesium": (2.0, 0.2, 0.08, 12), "phosphate": (3.5, 0.5, 0.2, 12),
    "glucose": (130, 25, 10, 6), "bun": (18, 6, 1.5, 12), "creatinine": (1.0, 0.3, 0.08, 12),
    "hemoglobin": (11.5, 1.5, 0.3, 12), "hematocrit": (35, 4, 1, 12), "wbc": (9, 2.5, 0.8, 12),
    "platelets": (220, 50, 12, 12), "inr": (1.1, 0.15, 0.05, 12), "ptt": (32, 4, 1.5, 12),
    "bilirubin": (0.8, 0.3, 0.08, 24), "alt": (30, 10, 3, 24), "ast": (32, 10, 3, 24),
    "albumin": (3.4, 0.4, 0.1, 24), "troponin": (0.02, 0.01, 0.005, 24), "bnp": (150, 60, 15, 24),
    "crp": (40, 20, 5, 24), "procalcitonin": (0.3, 0.15, 0.05, 24), "age": (64, 14, 0.0, 48),
    "weight": (80, 15, 0.3, 24),
}
assert len(EHR_VARIABLES) == 46, len(EHR_VARIABLES)
