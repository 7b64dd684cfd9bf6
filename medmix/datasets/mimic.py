"""MIMIC-IV-MM and MIMIC-III (external validation): user-prepared stay folders.

MIMIC data cannot be redistributed, so these adapters read a folder the user prepares from their
own credentialed copy (layout in medmix/datasets/README.md):

    <root>/cohort.csv      one row per ICU stay
    <root>/ehr/...         one CSV/Parquet per stay: hourly rows x the 46 variables
    <root>/cxr/...         MIMIC-CXR-JPG files (MIMIC-IV-MM only)
    <root>/notes/...       radiology notes as .txt (or the text inline in cohort.csv)

cohort.csv columns (``columns: {our name: your column}`` renames): ``subject_id`` (patient),
``stay_id`` (MIMIC-IV) / ``icustay_id`` (MIMIC-III) (sample), outcomes ``mortality``,
``long_stay`` (ICU stay >= 7 days), ``readmission_30d`` (0/1, empty = unknown),
``cxr_frontal`` / ``cxr_lateral`` (paths; MIMIC-IV-MM), ``note_text`` or ``note_path``, and
``ehr_path``. Paths are relative to ``root`` and may not leave it.
MIMIC-III builds ``note`` + ``ehr``; declaring ``frontal`` / ``lateral`` in its config (so that its
modalities match MIMIC-IV-MM's) adds them as missing for every stay.

MIMIC-IV-MM: split 0.72 / 0.13 / 0.15 by subject (``split_ratios``, ``split_seed``), or the
user's ``split_column``. MIMIC-III: every stay is an external test sample (split ``test``,
``role: external``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from medmix.cohort import INPUT_PREFIX, Cohort, CohortError
from medmix.datasets import register_adapter
from medmix.datasets.declared import selected_modalities
from medmix.datasets.manifest import MAX_LISTED, cohort_from_table, read_table
from medmix.datasets.mimic_variables import EHR_VARIABLE_NAMES
from medmix.datasets.paths import config_path

OUTCOMES = ("mortality", "long_stay", "readmission_30d")
MIMIC_IV_SPLIT = (0.72, 0.13, 0.15)


def _mimic_modalities(cfg: dict[str, Any]) -> dict[str, str]:
    return {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"}


def _mimic_labels(cfg: dict[str, Any]) -> list[str]:
    return list(cfg.get("labels") or OUTCOMES)


@register_adapter("mimic_iv_mm", modalities=_mimic_modalities, labels=_mimic_labels)
def load_mimic_iv_mm(name: str, cfg: dict[str, Any], base_dir: Path) -> Cohort:
    """MIMIC-IV-MM: frontal + lateral CXR, radiology note, 46-variable hourly EHR; 3 outcomes."""
    return _load_mimic(name, cfg, base_dir, sample_column="stay_id", with_cxr=True, external=False)


# MIMIC-III has no CXR: frontal/lateral exist only when the config declares them (to match the
# development dataset's modalities), and are then missing for every stay.
@register_adapter("mimic_iii", modalities=_mimic_modalities, labels=_mimic_labels, default_selection=("note", "ehr"))
def load_mimic_iii(name: str, cfg: dict[str, Any], base_dir: Path) -> Cohort:
    """MIMIC-III external validation: radiology note + 46-variable hourly EHR; same 3 outcomes."""
    return _load_mimic(name, cfg, base_dir, sample_column="icustay_id", with_cxr=False, external=True)


def _load_mimic(name, cfg, base_dir, sample_column: str, with_cxr: bool, external: bool) -> Cohort:
    where = f"dataset {name!r}"
    if not cfg.get("root"):
        raise CohortError(f"{where}: config lacks 'root' (the prepared folder holding cohort.csv)")
    root = config_path(base_dir, cfg["root"]).resolve()
    cohort_csv = root / cfg.get("cohort_csv", "cohort.csv")
    if not cohort_csv.is_file():
        raise CohortError(f"{where}: {cohort_csv} does not exist (see medmix/datasets/README.md for the layout)")
    rename = {"subject_id": "subject_id", "sample_id": sample_column, **{o: o for o in OUTCOMES},
              "cxr_frontal": "cxr_frontal", "cxr_lateral": "cxr_lateral", "note_text": "note_text",
              "note_path": "note_path", "ehr_path": "ehr_path", **(cfg.get("columns") or {})}
    raw = read_table(cohort_csv)
    note_col = rename["note_text"] if rename["note_text"] in raw.columns else rename["note_path"]
    modalities: dict[str, dict[str, Any]] = {}
    if with_cxr:
        modalities["frontal"] = {"kind": "image", "column": rename["cxr_frontal"]}
        modalities["lateral"] = {"kind": "image", "column": rename["cxr_lateral"]}
    else:  # declared only to match the development dataset: missing for every stay
        raw = raw.assign(_no_cxr="")
        modalities["frontal"] = {"kind": "image", "column": "_no_cxr"}
        modalities["lateral"] = {"kind": "image", "column": "_no_cxr"}
    modalities["note"] = {"kind": "text", "column": note_col, "file": note_col == rename["note_path"]}
    modalities["ehr"] = {"kind": "timeseries", "column": rename["ehr_path"]}
    if cfg.get("check_ehr_columns", True):  # the files hold these columns: the experts read them by name
        modalities["ehr"]["variables"] = list(cfg.get("ehr_variables") or EHR_VARIABLE_NAMES)
    keep = selected_modalities(name, cfg, "mimic_iii" if external else "mimic_iv_mm")
    modalities = {m: entry for m, entry in modalities.items() if m in keep}
    labels = list(cfg.get("labels") or OUTCOMES)
    unknown = [lab for lab in labels if lab not in OUTCOMES]
    if unknown:
        raise CohortError(f"{where}: labels {unknown} are not MIMIC-MM outcomes {OUTCOMES}")
    table = raw.rename(columns={rename[lab]: lab for lab in labels if rename[lab] in raw.columns})
    spec: dict[str, Any] = {
        "task": "multitask",
        "labels": labels,
        "id_column": rename["sample_id"],
        "patient_column": rename["subject_id"],
        "modalities": modalities,
        "label_map": cfg.get("label_map"),
    }
    if external:
        spec["role"] = "external"  # every stay is evaluation data (split test)
    elif cfg.get("split_column"):
        spec["split_column"] = cfg["split_column"]
    else:
        spec["split_ratios"] = list(cfg.get("split_ratios") or MIMIC_IV_SPLIT)
        spec["split_seed"] = int(cfg.get("split_seed", 0))
    extra: dict[str, Any] = {"adapter": "mimic_iii" if external else "mimic_iv_mm", "cohort_csv": str(cohort_csv)}
    if external or cfg.get("role"):
        extra["role"] = "external" if external else cfg["role"]
    if not with_cxr and ("frontal" in keep or "lateral" in keep):
        extra["warnings"] = ["MIMIC-III has no chest X-rays: frontal/lateral are declared to match the development "
                             "dataset and are missing for every stay"]
    cohort = cohort_from_table(name, table, spec, root, extra=extra)
    if "ehr" in keep and cfg.get("check_ehr_columns", True):
        check_ehr_columns(cohort, list(cfg.get("ehr_variables") or EHR_VARIABLE_NAMES), where)
    return cohort


def check_ehr_columns(cohort: Cohort, variables: list[str], where: str) -> None:
    """Every present EHR file must have a column per variable (values may be empty)."""
    problems = []
    for sid, path in zip(cohort.sample_ids, cohort.frame[INPUT_PREFIX + "ehr"], strict=True):
        if path is None or path != path:
            continue
        columns = _header(Path(path))
        if columns is None:  # unreadable: the extractor's reader rejects it and records it absent
            continue
        lacking = [v for v in variables if v not in columns]
        if lacking:
            problems.append(f"{sid} ({path}: lacks {lacking[:5]}{'...' if len(lacking) > 5 else ''})")
    if problems:
        more = f" and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise CohortError(f"{where}: EHR files without the expected variable columns: "
                          f"{'; '.join(problems[:MAX_LISTED])}{more}")


def _header(path: Path) -> list[str] | None:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
