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

Input contents (config ``inputs_check``): by default (``stat``) a file enters the fingerprint by
name, size and mtime, as Snakemake's own rerun triggers do, so a file replaced by another of the
same size with its mtime restored goes unnoticed. With ``inputs_check: content`` the workflow
fingerprints each file by name, size and the sha256 of its bytes instead (``content=True``): every
``snakemake`` invocation re-reads every input file of the extractions it plans, and a changed
file reruns the extractions that read it, whatever its mtime (a ``touch`` alone reruns nothing).

The view file carries a checksum of its values and metadata (:mod:`medmix.store.checksum`),
verified by :func:`read_input_view`; a damaged or truncated view is moved aside to
``inputs.parquet.corrupt`` and the next run rebuilds it with its cohort.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from medmix.store.checksum import read_schema, read_table, write_table

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

    def fingerprint(self, modality: str, content: bool = False) -> str:
        """:func:`input_fingerprint` of the modality (inputs, their files and its schema)."""
        return input_fingerprint(self.sample_ids, self.inputs(modality), self.kinds[modality], self.schema(modality),
                                 content=content)

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
    write_table(table, path, check=lambda back: _check_rows(path, back.num_rows, len(view.sample_ids)))


def _check_rows(path: str | Path, rows: int, n: int) -> None:
    if rows != n:
        raise OSError(f"{path}: written input view does not hold {n} rows")


def read_input_view(path: str | Path, modalities: list[str] | None = None) -> InputView:
    """The view (all modalities, or ``modalities``); the columns read and the metadata are verified
    against the file's checksum (a damaged file is moved aside and ``CorruptFileError`` raised)."""
    schema = read_schema(path, expect=META_KEY)
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a medmix input view (no {META_KEY.decode()} metadata)")
    meta = json.loads(raw)
    kinds = {m: k for m, k in meta["modalities"].items() if modalities is None or m in modalities}
    unknown = sorted(set(modalities or []) - set(kinds))
    if unknown:
        raise KeyError(f"{path}: dataset {meta['dataset']!r} has no modality {unknown} (has "
                       f"{sorted(meta['modalities'])})")
    table = read_table(path, columns=["sample_id", *[f"input:{m}" for m in kinds]], expect=META_KEY)
    values = {m: table.column(f"input:{m}").to_pylist() for m in kinds}
    schemas = {m: s for m, s in (meta.get("schemas") or {}).items() if m in kinds}
    return InputView(meta["dataset"], table.column("sample_id").to_pylist(), kinds, values, schemas)


def _files(path: Path) -> list[tuple[str, Path]]:
    """(name, path) of a file, or of every file below a folder (e.g. a DICOM series), sorted."""
    if path.is_dir():
        return [(str(p.relative_to(path)), p) for p in sorted(p for p in path.rglob("*") if p.is_file())]
    return [("", path)]


def _file_stats(value: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of a file, or of every file below a folder (e.g. a DICOM series)."""
    try:
        return [(name, (st := p.stat()).st_size, st.st_mtime_ns) for name, p in _files(Path(value))]
    except OSError:
        return [("<absent>", -1, -1)]


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _file_digests(value: str) -> list[tuple[str, int, str]]:
    """(name, size, sha256) of a file, or of every file below a folder."""
    try:
        return [(name, p.stat().st_size, file_sha256(p)) for name, p in _files(Path(value))]
    except OSError:
        return [("<absent>", -1, "")]


def input_fingerprint(sample_ids: list[str], values: list[Any], kind: str, schema: dict[str, Any] | None = None,
                      content: bool = False) -> str:
    """sha256 of what an extraction of one modality reads (see the module docstring).

    ``content``: files enter by name, size and the sha256 of their bytes (config ``inputs_check:
    content``) instead of name, size and mtime.
    """
    h = hashlib.sha256()
    h.update(kind.encode())
    if schema:  # no schema: the fingerprint of a view written before schemas existed
        h.update(b"\x03" + json.dumps(schema, sort_keys=True).encode())
    for sid, value in zip(sample_ids, values, strict=True):
        h.update(b"\x00" + str(sid).encode() + b"\x00")
        h.update(json.dumps(value, default=str).encode())
        if value is not None and kind in PATH_KINDS:
            if content:
                for name, size, digest in _file_digests(str(value)):
                    h.update(f"\x01{name}\x02{size}\x02sha256:{digest}".encode())
            else:
                for name, size, mtime in _file_stats(str(value)):
                    h.update(f"\x01{name}\x02{size}\x02{mtime}".encode())
    return h.hexdigest()


def files_digest(paths: list[str | Path]) -> str:
    """sha256 over the (name, size, sha256) of every file below each path (a file or a folder), in
    order; ``"absent"`` entries for paths that do not exist."""
    h = hashlib.sha256()
    for path in paths:
        h.update(b"\x00" + str(path).encode())
        for name, size, digest in _file_digests(str(path)):
            h.update(f"\x01{name}\x02{size}\x02{digest}".encode())
    return h.hexdigest()


def source_fingerprint(paths: list[str | Path], root: str | Path) -> str:
    """sha256 over the name (relative to ``root``) and the sha256 of each source file, sorted by name:
    the code a job ran, the same wherever the checkout lies and whatever the files' mtimes."""
    h = hashlib.sha256()
    for name, path in sorted((os.path.relpath(p, root), p) for p in paths):
        h.update(f"{name}\x02{file_sha256(path)}\x00".encode())
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
