"""The Parquet feature store: one file per (dataset, modality, expert).

Schema: ``sample_id`` (string), ``present`` (bool), ``embedding`` (fixed-size list of float32).
``present`` alone carries absence: an absent sample's embedding is a row of zeros, not an Arrow
null (a null fixed-size list is what pyarrow before 26 cannot write to Parquet, and it would say
nothing ``present`` does not). Files written with null entries (by older versions) read the same;
a null embedding on a present row is refused. Embeddings of present samples are finite: the writer refuses
NaN/inf (the extraction job records such a sample as absent with the reason "non-finite
embedding" instead) and the reader refuses a file holding any, never repairing them. The file's key-value metadata (key
``medmix``) records the extractor, model id, revision, dim, preprocessing, package version and a hash of the inputs.

Every file carries a checksum of its values and metadata (:mod:`medmix.store.checksum`), verified
by :func:`read_features` (values and metadata) and :func:`read_metadata` (metadata and row count).
A file that fails, or cannot be read at all (truncated), is moved aside to ``<name>.corrupt`` and a
:class:`FeatureStoreError` naming it is raised: the next Snakemake run sees the feature file
missing and reruns its extraction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from medmix.store.checksum import (
    CORRUPT_SUFFIX,
    CorruptFileError,
    corrupt,
    read_frame,
    read_schema,
    read_table,
    write_frame,
    write_table,
)

__all__ = ["CORRUPT_SUFFIX", "META_KEY", "CorruptFileError", "FeatureFile", "FeatureStoreError", "check_identity",
           "hash_inputs", "read_features", "read_frame", "read_metadata", "read_predictions", "read_schema",
           "read_table", "write_features", "write_frame", "write_predictions", "write_table"]

META_KEY = b"medmix"
#: Metadata fields that must match the configured expert for a cache to be valid.
IDENTITY_FIELDS = ("extractor", "model_id", "revision", "dim", "preprocessing")


class FeatureStoreError(ValueError):
    """A feature file is missing, malformed or does not match what the config asks for."""


@dataclass
class FeatureFile:
    sample_ids: list[str]
    present: np.ndarray  # bool [N]
    embeddings: np.ndarray  # float32 [N, dim]; rows of absent samples are zero
    metadata: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def hash_inputs(sample_ids: list[str], values: list[Any]) -> str:
    """A stable hash of the (sample id, input) pairs an extraction ran on."""
    h = hashlib.sha256()
    for sid, value in zip(sample_ids, values, strict=True):
        h.update(str(sid).encode())
        h.update(b"\x00")
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
        h.update(b"\x01")
    return h.hexdigest()


def write_features(
    path: str | Path,
    sample_ids: list[str],
    embeddings: np.ndarray,
    present: np.ndarray,
    metadata: dict[str, Any],
) -> None:
    """Atomically write one feature file; absent rows (``present`` false) are stored as zeros."""
    from medmix import __version__

    embeddings = np.asarray(embeddings, dtype=np.float32)
    present = np.asarray(present, dtype=bool)
    n = len(sample_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != n or present.shape != (n,):
        raise FeatureStoreError(
            f"{path}: {n} ids but embeddings {embeddings.shape} and present {present.shape}"
        )
    if len(set(sample_ids)) != n:
        raise FeatureStoreError(f"{path}: duplicate sample ids {_duplicates(sample_ids)[:5]}")
    _check_finite(path, sample_ids, embeddings, present)
    embeddings = np.where(present[:, None], embeddings, np.float32(0.0))  # absent slots hold zeros, not NaN
    dim = embeddings.shape[1]
    meta = {**metadata, "dim": int(dim), "package_version": __version__, "n": n, "n_present": int(present.sum())}
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table({"sample_id": pa.array(sample_ids, pa.string()), "present": pa.array(present), "embedding": emb})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})

    def check(back: pa.Table) -> None:
        if back.num_rows != n or (back.schema.metadata or {}).get(META_KEY) is None:
            raise FeatureStoreError(f"{path}: read-back check failed")

    write_table(table, path, check=check)


def _meta(path: Path, raw: dict[bytes, bytes] | None) -> dict[str, Any]:
    if META_KEY not in (raw or {}):
        raise FeatureStoreError(f"{path}: no medmix metadata; not written by the feature store")
    try:
        return json.loads(raw[META_KEY])
    except ValueError as err:  # a file without a checksum (another tool's) whose metadata is damaged
        raise corrupt(path, f"its medmix metadata are not JSON ({err})", FeatureStoreError) from err


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The file's ``medmix`` metadata, verified against its checksum (the embeddings are not read)."""
    path = Path(path)
    if not path.exists():
        raise FeatureStoreError(f"feature file {path} does not exist")
    return _meta(path, read_schema(path, expect=META_KEY, error=FeatureStoreError).metadata)


def read_features(path: str | Path) -> FeatureFile:
    path = Path(path)
    if not path.exists():
        raise FeatureStoreError(f"feature file {path} does not exist")
    table = read_table(path, expect=META_KEY, error=FeatureStoreError)  # one read: values and metadata agree
    meta = _meta(path, table.schema.metadata)
    missing = {"sample_id", "present", "embedding"} - set(table.column_names)
    if missing:
        raise FeatureStoreError(f"{path}: missing column(s) {sorted(missing)}")
    ids = table.column("sample_id").to_pylist()
    present = np.asarray(table.column("present").to_numpy(zero_copy_only=False), dtype=bool)
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    if dim != meta.get("dim"):
        raise FeatureStoreError(f"{path}: embedding width {dim} but metadata says dim={meta.get('dim')}")
    if col.null_count:  # a file written with null entries for absent rows: only those may be null
        null_present = present & ~np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if null_present.any():
            raise FeatureStoreError(f"{path}: null embedding for {int(null_present.sum())} present sample(s) "
                                    f"{[ids[i] for i in np.flatnonzero(null_present)[:5]]}")
    emb = np.zeros((len(ids), dim), np.float32)
    if len(ids):
        # Null list entries still occupy slots in the child array of a fixed-size list.
        child = col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        emb[:] = child.reshape(len(ids), dim)
        emb[~present] = 0.0
        _check_finite(path, ids, emb, present)
    if len(set(ids)) != len(ids):
        raise FeatureStoreError(f"{path}: duplicate sample ids {_duplicates(ids)[:5]}")
    return FeatureFile(ids, present, emb, meta)


def write_predictions(frame: Any, path: str | Path) -> None:
    """A prediction file (:mod:`medmix.pipeline.fit`): the frame, atomically, with its checksum."""
    write_frame(frame, path)


def read_predictions(path: str | Path, columns: list[str] | None = None) -> Any:
    """A prediction file as a pandas frame, verified against its checksum (a damaged file is moved
    aside to ``<name>.corrupt`` and :class:`CorruptFileError` is raised: the next run re-evaluates)."""
    return read_frame(path, columns, expect=b"pandas")


def _check_finite(path: str | Path, sample_ids: list[str], embeddings: np.ndarray, present: np.ndarray) -> None:
    """Refuse NaN/inf in the embedding of any present sample, naming the file and samples."""
    bad = np.flatnonzero(present & ~np.isfinite(embeddings).all(1))
    if len(bad):
        raise FeatureStoreError(f"{path}: non-finite embeddings for {len(bad)} present sample(s) "
                                f"{[sample_ids[i] for i in bad[:5]]}; the file is refused, not repaired")


def check_identity(path: str | Path, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    """Fail if the cache was produced with settings other than those the config asks for."""
    diffs = []
    for key in IDENTITY_FIELDS:
        if key in expected and expected[key] is not None and meta.get(key) != expected[key]:
            diffs.append(f"{key}: cached {meta.get(key)!r}, config {expected[key]!r}")
    if diffs:
        raise FeatureStoreError(
            f"{path}: cache does not match the config ({'; '.join(diffs)}); rerun its extraction "
            "(snakemake reruns it when the config changes) or delete the file"
        )


def _duplicates(ids: list[str]) -> list[str]:
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    return dup
