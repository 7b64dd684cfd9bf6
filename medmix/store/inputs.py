"""The labels-free input view extraction reads: ``results/{dataset}/inputs.parquet``.

Stage 1 never sees labels or splits: the workflow layer writes this view from the cohort (sample
ids + one input column per modality, the modality -> kind map in the metadata) and extraction
reads only it. :func:`input_fingerprint` summarises what one modality's extraction reads: the
(sample id, input) pairs and, for file inputs, every file's name, size and modification time.
The workflow compares it with the one recorded in a feature file's metadata, so a changed input
file reruns that extraction while an edited label or split reruns nothing of stage 1.

Each modality may carry an input schema the cohort step declares or infers (labels-free; for
tabular categories, computed from the training rows): ``{"variables": [...]}`` for a series,
``{"columns": [...], "categorical": {column: [categories]}}`` for a table. Experts size and encode
from it, and it is part of the fingerprint, so a changed schema reruns the extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medmix.store.atomic import atomic_path

META_KEY = b"medmix_inputs"
#: Modality kinds whose input cells are file (or folder) paths; the others hold values.
PATH_KINDS = frozenset({"image", "timeseries", "volume", "slide"})
#: Columns of a series file recognised as its time axis (lower-cased names; never a variable).
TIME_COLUMNS = ("time", "hour", "charttime")


@dataclass
class InputView:
    dataset: str
    sample_ids: list[str]
    kinds: dict[str, str]  # modality -> kind
    values: dict[str, list[Any]]  # modality -> per-sample input (None = missing)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> input schema

    def schema(self, modality: str) -> dict[str, Any]:
        """The modality's input schema (``{}`` when none is recorded)."""
        return dict(self.schemas.get(modality) or {})

    def fingerprint(self, modality: str) -> str:
        """:func:`input_fingerprint` of the modality (inputs, their files and its schema)."""
        return input_fingerprint(self.sample_ids, self.inputs(modality), self.kinds[modality], self.schema(modality))

    def inputs(self, modality: str) -> list[Any]:
        if modality not in self.values:
            raise KeyError(f"dataset {self.dataset!r} has no modality {modality!r} (has {sorted(self.values)})")
        return self.values[modality]


def write_input_view(path: str | Path, view: InputView) -> None:
    columns = {"sample_id": pa.array(view.sample_ids, pa.string())}
    for modality in view.kinds:
        columns[f"input:{modality}"] = pa.array(view.values[modality], pa.string())
    meta = {"dataset": view.dataset, "modalities": view.kinds,
            "schemas": {m: s for m, s in view.schemas.items() if m in view.kinds and s}}
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with atomic_path(path, verify=lambda p: _check_rows(p, len(view.sample_ids))) as tmp:
        pq.write_table(table, tmp)


def _check_rows(path: Path, n: int) -> None:
    if pq.read_metadata(path).num_rows != n:
        raise OSError(f"{path}: written input view does not hold {n} rows")


def read_input_view(path: str | Path, modalities: list[str] | None = None) -> InputView:
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a medmix input view (no {META_KEY.decode()} metadata)")
    meta = json.loads(raw)
    kinds = {m: k for m, k in meta["modalities"].items() if modalities is None or m in modalities}
    unknown = sorted(set(modalities or []) - set(kinds))
    if unknown:
        raise KeyError(f"{path}: dataset {meta['dataset']!r} has no modality {unknown} (has {sorted(meta['modalities'])})")
    table = pq.read_table(path, columns=["sample_id", *[f"input:{m}" for m in kinds]])
    values = {m: table.column(f"input:{m}").to_pylist() for m in kinds}
    schemas = {m: s for m, s in (meta.get("schemas") or {}).items() if m in kinds}
    return InputView(meta["dataset"], table.column("sample_id").to_pylist(), kinds, values, schemas)


def _file_stats(value: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of a file, or of every file below a folder (e.g. a DICOM series)."""
    path = Path(value)
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return [(str(p.relative_to(path)), (st := p.stat()).st_size, st.st_mtime_ns) for p in files]
        st = os.stat(path)
        return [("", st.st_size, st.st_mtime_ns)]
    except OSError:
        return [("<absent>", -1, -1)]


def input_fingerprint(sample_ids: list[str], values: list[Any], kind: str, schema: dict[str, Any] | None = None) -> str:
    """sha256 of what an extraction of one modality reads (see the module docstring)."""
    h = hashlib.sha256()
    h.update(kind.encode())
    if schema:  # no schema: the fingerprint of a view written before schemas existed
        h.update(b"\x03" + json.dumps(schema, sort_keys=True).encode())
    for sid, value in zip(sample_ids, values, strict=True):
        h.update(b"\x00" + str(sid).encode() + b"\x00")
        h.update(json.dumps(value, default=str).encode())
        if value is not None and kind in PATH_KINDS:
            for name, size, mtime in _file_stats(str(value)):
                h.update(f"\x01{name}\x02{size}\x02{mtime}".encode())
    return h.hexdigest()


def folder_fingerprint(folder: str | Path | None) -> str:
    """Names, sizes and mtimes of every file below a checkpoint folder (``local_dir``), hashed.

    ``""`` when no folder is set (weights come from the hub cache at the pinned revision).
    """
    if not folder:
        return ""
    root = Path(folder)
    if not root.exists():
        return "absent"
    h = hashlib.sha256()
    for name, size, mtime in _file_stats(str(root)):
        h.update(f"{name}\x02{size}\x02{mtime}\x00".encode())
    return h.hexdigest()
