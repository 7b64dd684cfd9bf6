"""MMIST-ccRCC (Mota et al., 2024): CT volume, whole-slide image and clinical note per patient.

The task is 12-month vital status (binary; 1 = alive at 12 months, about 88% positive in the
MedMIX paper) with the dataset's official split. Expected folder (``root``; layout in
medmix/datasets/README.md):

    <root>/clinical.csv    one row per patient: case_id, vital_status_12m, split, ct_path,
                           wsi_path, note_text (or note_path)
    <root>/ct/...          NIfTI (.nii/.nii.gz), .npy/.npz or a DICOM series folder
    <root>/wsi/...         a slide image (or an exported thumbnail / tile) readable by Pillow
    <root>/notes/...       clinical notes as .txt when ``note_path`` is used

``columns: {our name: your column}`` renames columns. The label accepts 0/1 or alive/dead
(``label_map`` adds spellings). The official split must be in the split column (train/val/test);
when it has no validation rows, ``val_from_train: 0.15`` carves one out of the training patients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmix.cohort import Cohort, CohortError
from medmix.datasets import register_adapter
from medmix.datasets.declared import selected_modalities
from medmix.datasets.manifest import cohort_from_table, read_table
from medmix.datasets.paths import config_path

LABEL = "vital_status_12m"
DEFAULT_LABEL_MAP = {"alive": 1, "living": 1, "dead": 0, "deceased": 0}


@register_adapter("mmist_ccrcc", modalities=lambda cfg: {"ct": "volume", "wsi": "slide", "note": "text"},
                  labels=lambda cfg: [LABEL])
def load_mmist_ccrcc(name: str, cfg: dict[str, Any], base_dir: Path) -> Cohort:
    """Build the MMIST-ccRCC cohort from ``root/clinical.csv`` with the official split."""
    where = f"dataset {name!r}"
    if not cfg.get("root"):
        raise CohortError(f"{where}: config lacks 'root' (the folder holding clinical.csv)")
    root = config_path(base_dir, cfg["root"]).resolve()
    clinical = root / cfg.get("clinical_csv", "clinical.csv")
    if not clinical.is_file():
        raise CohortError(f"{where}: {clinical} does not exist (see medmix/datasets/README.md for the layout)")
    cols = {"case_id": "case_id", LABEL: LABEL, "split": "split", "ct_path": "ct_path", "wsi_path": "wsi_path",
            "note_text": "note_text", "note_path": "note_path", **(cfg.get("columns") or {})}
    table = read_table(clinical).rename(columns={cols[LABEL]: LABEL})
    note_col = cols["note_text"] if cols["note_text"] in table.columns else cols["note_path"]
    keep = selected_modalities(name, cfg, "mmist_ccrcc")
    modalities = {
        "ct": {"kind": "volume", "column": cols["ct_path"]},
        "wsi": {"kind": "slide", "column": cols["wsi_path"]},
        "note": {"kind": "text", "column": note_col, "file": note_col == cols["note_path"]},
    }
    spec = {
        "task": "binary",
        "labels": [LABEL],
        "id_column": cols["case_id"],
        "patient_column": cols.get("patient_id", cols["case_id"]),
        "split_column": cols["split"],
        "val_from_train": cfg.get("val_from_train"),
        "split_seed": int(cfg.get("split_seed", 0)),
        "label_map": {**DEFAULT_LABEL_MAP, **(cfg.get("label_map") or {})},
        "modalities": {m: entry for m, entry in modalities.items() if m in keep},
    }
    extra: dict[str, Any] = {"adapter": "mmist_ccrcc", "clinical_csv": str(clinical), "positive_class": "alive"}
    if cfg.get("role"):
        extra["role"] = cfg["role"]
    return cohort_from_table(name, table, spec, root, extra=extra)
