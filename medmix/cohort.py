"""The normalised cohort table every dataset adapter produces (``results/{dataset}/cohort.parquet``).

Columns:
- ``sample_id`` (str, unique), ``patient_id`` (str), ``split`` (``train``/``val``/``test``);
- ``label:<name>`` (float 0/1; multiclass tasks store one column per class, one-hot);
- ``input:<modality>`` (str or null): an absolute path (image, timeseries, volume, slide), the text
  itself (text) or a JSON list of numbers (tabular). Null means the modality is missing.

Parquet metadata (key ``medmix_cohort``) holds the dataset name, task, label names, the
modality -> kind map and each modality's input schema (``input_schema``: a series' variable
list, a table's columns and training-split categories; see :mod:`medmix.store.inputs`).

The file carries a checksum of its values and metadata (:mod:`medmix.store.checksum`), verified on
every read; a file that fails or is truncated is moved aside to ``cohort.parquet.corrupt`` and a
:class:`CohortError` naming it is raised, so the next run rebuilds the cohort.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from medmix.store import read_schema, read_table, write_table
from medmix.store.inputs import InputView

META_KEY = b"medmix_cohort"
SPLITS = ("train", "val", "test")
TASKS = ("multilabel", "binary", "multiclass", "multitask")
LABEL_PREFIX = "label:"
INPUT_PREFIX = "input:"


class CohortError(ValueError):
    """A cohort violates the contract (the message names the rows or columns)."""


@dataclass
class Cohort:
    name: str
    task: str
    labels: list[str]
    modalities: dict[str, str]  # modality name -> kind
    frame: pd.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> input schema

    @property
    def sample_ids(self) -> list[str]:
        return self.frame["sample_id"].astype(str).tolist()

    def label_matrix(self):
        return self.frame[[LABEL_PREFIX + n for n in self.labels]].to_numpy(dtype="float32")

    def inputs(self, modality: str) -> list[Any]:
        """Per-sample input cells of ``modality`` in cohort order (``None`` = missing)."""
        col = self.frame[INPUT_PREFIX + modality]
        return [None if (v is None or (isinstance(v, float) and v != v)) else v for v in col.tolist()]

    def input_view(self) -> InputView:
        """The labels-free view stage 1 reads: sample ids and inputs (as strings), no labels or splits."""
        values = {m: [None if v is None else str(v) for v in self.inputs(m)] for m in self.modalities}
        return InputView(self.name, self.sample_ids, dict(self.modalities), values, dict(self.schemas))

    def validate(self) -> None:
        f = self.frame
        if self.task not in TASKS:
            raise CohortError(f"dataset {self.name!r}: task {self.task!r} not in {TASKS}")
        need = ["sample_id", "patient_id", "split"] + [LABEL_PREFIX + n for n in self.labels]
        need += [INPUT_PREFIX + m for m in self.modalities]
        missing = [c for c in need if c not in f.columns]
        if missing:
            raise CohortError(f"dataset {self.name!r}: cohort lacks column(s) {missing}")
        dup = f["sample_id"][f["sample_id"].duplicated()].tolist()
        if dup:
            raise CohortError(f"dataset {self.name!r}: duplicate sample ids {dup[:10]}")
        bad_split = f.loc[~f["split"].isin(SPLITS), "sample_id"].tolist()
        if bad_split:
            raise CohortError(f"dataset {self.name!r}: samples {bad_split[:10]} have a split outside {SPLITS}")
        per_patient = f.groupby("patient_id")["split"].nunique()
        leaky = per_patient[per_patient > 1].index.tolist()
        if leaky:
            raise CohortError(f"dataset {self.name!r}: patients {leaky[:10]} appear in more than one split")
        for n in self.labels:
            col = f[LABEL_PREFIX + n]
            bad = f.loc[col.notna() & ~col.isin([0, 1]), "sample_id"].tolist()
            if bad:
                raise CohortError(f"dataset {self.name!r}: label {n!r} outside {{0, 1}} for samples {bad[:10]}")


def write_cohort(cohort: Cohort, path: str | Path) -> None:
    cohort.validate()
    table = pa.Table.from_pandas(cohort.frame.reset_index(drop=True), preserve_index=False)
    meta = {
        "dataset": cohort.name,
        "task": cohort.task,
        "labels": cohort.labels,
        "modalities": cohort.modalities,
        **cohort.extra,
        "input_schema": cohort.schemas,
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    write_table(table, path)  # atomic, with its checksum, read back and verified before the rename


def read_cohort_schemas(path: str | Path) -> dict[str, dict[str, Any]]:
    """The cohort's input schemas (modality -> schema) from its metadata, without reading the rows
    (the metadata and row count are verified against the file's checksum)."""
    raw = (read_schema(path, expect=META_KEY, error=CohortError).metadata or {}).get(META_KEY)
    if raw is None:
        raise CohortError(f"{path}: not a medmix cohort file (no {META_KEY.decode()} metadata)")
    return dict(json.loads(raw).get("input_schema") or {})


def read_cohort(path: str | Path) -> Cohort:
    table = read_table(path, expect=META_KEY, error=CohortError)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CohortError(f"{path}: not a medmix cohort file (no {META_KEY.decode()} metadata)")
    meta = json.loads(raw)
    frame = table.to_pandas()
    extra = {k: v for k, v in meta.items() if k not in {"dataset", "task", "labels", "modalities", "input_schema"}}
    cohort = Cohort(meta["dataset"], meta["task"], list(meta["labels"]), dict(meta["modalities"]), frame, extra,
                    dict(meta.get("input_schema") or {}))
    cohort.validate()
    return cohort
