"""The generic manifest adapter: one row per sample, columns named in config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmix.cohort import INPUT_PREFIX, LABEL_PREFIX, SPLITS, Cohort, CohortError

PATH_KINDS = ("image", "timeseries", "volume", "slide")


def load_manifest_dataset(name: str, cfg: dict[str, Any], base_dir: Path) -> Cohort:
    manifest = Path(cfg["manifest"])
    if not manifest.is_absolute():
        manifest = base_dir / manifest
    if not manifest.exists():
        raise CohortError(f"dataset {name!r}: manifest {manifest} does not exist")
    frame = pd.read_parquet(manifest) if manifest.suffix == ".parquet" else pd.read_csv(manifest, dtype=str, keep_default_na=False)
    root = manifest.parent.resolve()
    id_col, pat_col = cfg.get("id_column", "sample_id"), cfg.get("patient_column", "patient_id")
    out = pd.DataFrame({"sample_id": frame[id_col].astype(str), "patient_id": frame[pat_col].astype(str)})
    split_col = cfg.get("split_column")
    if split_col:
        out["split"] = frame[split_col].astype(str).str.strip().str.lower()
    else:
        out["split"] = patient_split(out["patient_id"], cfg.get("split_ratios", [0.65, 0.15, 0.20]), int(cfg.get("split_seed", 0)))
    for label in cfg["labels"]:
        out[LABEL_PREFIX + label] = pd.to_numeric(frame[label].replace("", np.nan), errors="coerce")
    modalities = {}
    for mod, spec in cfg["modalities"].items():
        kind = spec["kind"]
        modalities[mod] = kind
        if kind == "tabular":
            cols = spec["columns"]
            vals = frame[cols].apply(pd.to_numeric, errors="coerce")
            out[INPUT_PREFIX + mod] = [None if r.isna().all() else json.dumps([None if np.isnan(v) else float(v) for v in r]) for _, r in vals.iterrows()]
            continue
        cells = frame[spec["column"]].fillna("").astype(str).str.strip()
        if kind in PATH_KINDS:
            resolved = []
            for sid, cell in zip(out["sample_id"], cells, strict=True):
                if not cell:
                    resolved.append(None)
                    continue
                path = (root / cell).resolve()
                if root not in path.parents:
                    raise CohortError(f"dataset {name!r}: sample {sid}: path {cell!r} escapes the manifest folder {root}")
                resolved.append(str(path) if path.exists() else None)
            out[INPUT_PREFIX + mod] = resolved
        else:
            out[INPUT_PREFIX + mod] = [c if c else None for c in cells]
    cohort = Cohort(name, cfg["task"], list(cfg["labels"]), modalities, out)
    cohort.validate()
    return cohort


def patient_split(patients: pd.Series, ratios: list[float], seed: int) -> list[str]:
    """Deterministic split by patient: shuffle unique patients with ``seed``, cut by ``ratios``."""
    uniq = np.array(sorted(set(patients)))
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    cuts = np.floor(np.cumsum(ratios)[:-1] / np.sum(ratios) * len(uniq)).astype(int)
    assign = {}
    for part, chunk in zip(SPLITS, np.split(uniq, cuts), strict=True):
        for p in chunk:
            assign[p] = part
    return [assign[p] for p in patients]
