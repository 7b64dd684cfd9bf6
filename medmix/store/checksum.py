"""Content checksums of the Parquet files the pipeline caches, verified on every read.

Feature files, cohort tables, input views and prediction files carry, in their key-value metadata,
a sha256 of every column's values and one of the rest of the key-value metadata, computed from
the Arrow table before it is written (:func:`write_table`) and recomputed from what a reader
decodes (:func:`read_table`, :func:`read_schema`). The digests are of the values, not of the
file's bytes: a byte changed in place (size and mtime kept) in a data page or in the footer changes
a decoded value, the metadata, or makes the file unreadable, and each is caught; a byte the reader
never uses (column statistics, the writer's name) changes nothing that is read and is not reported.

Why not Parquet page checksums (``write_page_checksum`` / ``page_checksum_verification``): they
cover data and dictionary pages only, not the footer that holds the schema and the ``medmix``
metadata (a flipped byte there, e.g. in a feature file's ``dim`` or input fingerprint, reads back
without error), and only readers that ask for the check get it.

Canonical form (``sha256-arrow-values/1``): per column, the row count, the positions of nulls and
the values of the non-null slots, in an encoding that does not depend on how the table is chunked,
on string vs large string, on dictionary encoding or on what a null slot holds (all of which a
Parquet round trip may change). Nested lists, fixed-size lists and structs are walked down.

A file that fails (unreadable, truncated, a digest that differs) is moved aside to
``<name>.corrupt`` before the error is raised, so the next Snakemake run sees the output missing
and reruns the job that writes it (``all`` names every feature and prediction file; a narrower
target reruns it when a job downstream needs it); the error names the file and says so. A read
during Snakemake's planning (the feature files' footers, for the input fingerprints) moves a
damaged file aside too, but that run has already listed the files it has: the next run rebuilds it.

A file with no checksum (written before checksums existed, or by another tool) is read unverified,
with a warning, provided it has the metadata entry its writer always puts there (``expect``): a
byte flipped in the footer's count of entries can drop them all, which reads as damage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medmix.store.atomic import atomic_path

log = logging.getLogger("medmix.store")

#: Key-value metadata entry holding the digests (JSON).
CHECKSUM_KEY = b"medmix_checksum"
#: A second entry naming the algorithm: with it, a file whose checksum entry is lost (a flipped
#: byte in its key) is corrupt, not "unverified"; a flip in this key changes the metadata digest.
MARKER_KEY = b"medmix_checksummed"
ALGORITHM = "sha256-arrow-values/1"
#: Suffix of a file moved aside because it failed verification.
CORRUPT_SUFFIX = ".corrupt"
REBUILT = "the next snakemake run rebuilds it"
#: Metadata keys left out of the metadata digest: the checksum itself, and the Arrow schema copy
#: pyarrow stores (and strips on read).
_NOT_DIGESTED = (CHECKSUM_KEY, b"ARROW:schema")


class CorruptFileError(ValueError):
    """A cached file failed verification (it has been moved aside; the next run rebuilds it)."""


# --------------------------------------------------------------------------------------- digests
def _normal(arr: pa.Array) -> pa.Array:
    """The array in the canonical type family: dictionaries decoded, extension types as their
    storage, strings / binaries / lists as their large variant."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _normal(arr.dictionary_decode())
    if isinstance(t, pa.ExtensionType):
        return _normal(arr.storage)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return arr.cast(pa.large_string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return arr.cast(pa.large_binary())
    if pa.types.is_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return arr.cast(pa.large_list(t.value_field))
    return arr


class _Column:
    """Streaming digest of one (possibly nested) column, fed chunk by chunk."""

    def __init__(self) -> None:
        self.tag: str | None = None
        self.n = 0
        self.nulls = hashlib.sha256()  # global positions (int64) of the null slots
        self.values = hashlib.sha256()  # non-null values (lengths, for lists and strings)
        self.data = hashlib.sha256()  # string / binary bytes
        self.children: list[_Column] = []

    def feed(self, arr: pa.Array) -> None:
        arr = _normal(arr)
        t = arr.type
        tag = _tag(t)
        if self.tag is None:
            self.tag = tag
            n_children = t.num_fields if pa.types.is_struct(t) else int(_is_list(t))
            self.children = [_Column() for _ in range(n_children)]
        elif tag != self.tag:
            raise TypeError(f"column chunks of two types: {self.tag} and {tag}")
        n = len(arr)
        valid = None
        if arr.null_count:
            valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            self.nulls.update((np.flatnonzero(~valid) + self.n).astype("<i8"))
        self.n += n
        if n == 0 or pa.types.is_null(t):
            return
        if pa.types.is_boolean(t):
            self.values.update(np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=np.uint8))
        elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            if valid is not None:
                arr = pc.fill_null(arr, "" if pa.types.is_large_string(t) else b"")
            offsets = np.frombuffer(arr.buffers()[1], dtype="<i8")[arr.offset:arr.offset + n + 1]
            self.values.update(np.diff(offsets).astype("<i8"))
            if arr.buffers()[2] is not None and offsets[-1] > offsets[0]:
                self.data.update(np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]])
        elif pa.types.is_large_list(t):
            self.values.update(pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype("<i8"))
            self.children[0].feed(arr.flatten())  # the values of the non-null lists only
        elif pa.types.is_fixed_size_list(t):
            self.children[0].feed(arr.flatten())  # the values of the non-null lists only
        elif pa.types.is_struct(t):
            for child, field in zip(self.children, arr.flatten(), strict=True):
                child.feed(field)  # each field with the struct's nulls applied
        elif (width := _byte_width(t)) and len(arr.buffers()) == 2:
            raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[arr.offset * width:(arr.offset + n) * width]
            if valid is not None:  # what a null slot holds is undefined: zero it
                raw = raw.reshape(n, width).copy()
                raw[~valid] = 0
            self.values.update(np.ascontiguousarray(raw))
        else:  # any other type (maps, unions, ...): its Python values
            self.values.update(repr(arr.to_pylist()).encode())

    def hexdigest(self) -> str:
        h = hashlib.sha256(f"{self.tag}\x00{self.n}\x00".encode())
        for part in (self.nulls, self.values, self.data, *self.children):
            h.update(part.hexdigest().encode())
        return h.hexdigest()


def _byte_width(t: pa.DataType) -> int:
    """Bytes per value of a fixed-width type (0 for the others and for bit-packed booleans)."""
    try:
        bits = t.bit_width
    except ValueError:
        return 0
    return bits // 8 if bits % 8 == 0 else 0


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _tag(t: pa.DataType) -> str:
    if pa.types.is_large_string(t):
        return "utf8"
    if pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_large_list(t):
        return "list"
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list[{t.list_size}]"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(t.field(i).name for i in range(t.num_fields)) + ">"
    return str(t)


def column_digest(column: pa.ChunkedArray | pa.Array) -> str:
    """sha256 of one column's values (see the module docstring for the canonical form)."""
    digest = _Column()
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not chunks:
        chunks = [pa.array([], type=column.type)]
    for chunk in chunks:
        digest.feed(chunk)
    return digest.hexdigest()


def metadata_digest(metadata: dict[bytes, bytes] | None) -> str:
    """sha256 of the key-value metadata, less the checksum entry (keys sorted)."""
    h = hashlib.sha256()
    for key, value in sorted((metadata or {}).items()):
        if key in _NOT_DIGESTED:
            continue
        h.update(len(key).to_bytes(8, "little") + key + len(value).to_bytes(8, "little") + value)
    return h.hexdigest()


def table_checksum(table: pa.Table) -> dict[str, Any]:
    """The checksum record of ``table``: per-column digests, the metadata digest and the row count."""
    names = table.column_names
    if len(set(names)) != len(names):
        raise ValueError(f"column names appear twice: {sorted({n for n in names if names.count(n) > 1})}")
    return {
        "algorithm": ALGORITHM,
        "rows": table.num_rows,
        "metadata": metadata_digest(table.schema.metadata),
        "columns": {name: column_digest(table.column(name)) for name in names},
    }


def with_checksum(table: pa.Table) -> pa.Table:
    """``table`` with its checksum (and the marker) added to its key-value metadata."""
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k not in (CHECKSUM_KEY, MARKER_KEY)}
    meta[MARKER_KEY] = ALGORITHM.encode()
    table = table.replace_schema_metadata(meta)
    record = table_checksum(table)
    return table.replace_schema_metadata({**meta, CHECKSUM_KEY: json.dumps(record, sort_keys=True).encode()})


# ----------------------------------------------------------------------------------- verification
def _record(metadata: dict[bytes, bytes] | None, expect: bytes | None = None) -> dict[str, Any] | None:
    """The checksum record, ``None`` for a file without one; raises ``ValueError`` when damaged.

    A file without a checksum must still have key-value metadata (pyarrow always writes some) and,
    where given, the ``expect`` entry its writer puts there: a byte flipped in the footer's list of
    entries can drop them all, which must read as damage, not as a file written by another tool.
    """
    metadata = metadata or {}
    raw, marker = metadata.get(CHECKSUM_KEY), metadata.get(MARKER_KEY)
    if raw is None and marker is None:
        if expect is not None and expect not in metadata:
            raise ValueError(f"it has no {expect.decode()} metadata and no checksum (its footer is damaged, "
                             "or it was not written by medmix)")
        if not metadata:
            raise ValueError("it has no key-value metadata at all (its footer is damaged, or another tool wrote it)")
        return None
    if raw is None:
        raise ValueError("its checksum entry is missing (the file is marked as checksummed)")
    try:
        record = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"its checksum entry is not readable ({err})") from None
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM or marker != ALGORITHM.encode():
        raise ValueError(f"its checksum entry is damaged or of an unknown algorithm "
                         f"({str(record)[:80] if not isinstance(record, dict) else record.get('algorithm')!r})")
    if not isinstance(record.get("columns"), dict):
        raise ValueError("its checksum entry has no column digests")
    return record


def verify_metadata(metadata: dict[bytes, bytes] | None, num_rows: int | None = None,
                    expect: bytes | None = None) -> dict[str, Any] | None:
    """Check the metadata digest (and the row count); returns the record (``None``: no checksum).
    Raises ``ValueError`` saying what differs (``expect``: see :func:`_record`)."""
    record = _record(metadata, expect)
    if record is None:
        return None
    if metadata_digest(metadata) != record.get("metadata"):
        raise ValueError("its metadata do not match their checksum")
    if num_rows is not None and num_rows != record.get("rows"):
        raise ValueError(f"it holds {num_rows} rows but its checksum says {record.get('rows')}")
    return record


def verify_table(table: pa.Table, expect: bytes | None = None) -> bool:
    """Check every column of ``table`` (all or some of a file's) against the file's checksum.
    Returns whether there was a checksum; raises ``ValueError`` naming the first column that differs."""
    record = verify_metadata(table.schema.metadata, table.num_rows, expect)
    if record is None:
        return False
    for name in table.column_names:
        want = record["columns"].get(name)
        if want is None:
            raise ValueError(f"its column {name!r} has no checksum")
        if column_digest(table.column(name)) != want:
            raise ValueError(f"the values of its column {name!r} do not match their checksum")
    return True


# ------------------------------------------------------------------------------------ quarantine
def quarantine(path: str | os.PathLike, read: os.stat_result | None = None) -> str:
    """Move a damaged file aside to ``<path>.corrupt`` (replacing an older one); says what happened.

    ``read``: the file's stat when it was read; a file replaced since (rewritten by its job) is left.
    """
    path = Path(path)
    aside = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        if read is not None:
            now = path.stat()
            if (now.st_ino, now.st_size, now.st_mtime_ns) != (read.st_ino, read.st_size, read.st_mtime_ns):
                return "it has been replaced since it was read: read it again"
        os.replace(path, aside)
    except FileNotFoundError:
        return f"it was already moved aside (by another reader); {REBUILT}"
    except OSError as err:
        return f"it could not be moved aside ({err}): delete it and {REBUILT}"
    return f"moved to {aside}; {REBUILT}"


def corrupt(path: str | os.PathLike, problem: str, error: Callable[[str], Exception] = CorruptFileError,
            read: os.stat_result | None = None) -> Exception:
    """Quarantine ``path`` and return the error to raise (naming the file and the rebuild)."""
    problem = " ".join(problem.split())  # pyarrow's messages may span lines
    moved = quarantine(path, read)
    log.error("%s is corrupt: %s; %s", path, problem, moved)
    return error(f"{path} is corrupt ({problem}): {moved}")


#: What pyarrow raises on a damaged file (OSError for unreadable pages; never a missing file).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError)
_NOT_DAMAGE = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_UNVERIFIED_WARNED: set[str] = set()


def _regular_file(path: Path) -> os.stat_result:
    """The stat of ``path``; ``FileNotFoundError`` / ``IsADirectoryError`` when it is not a file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(f"{path} is not a file")
    return st


def _damage(err: BaseException) -> bool:
    return isinstance(err, _READ_ERRORS) and not isinstance(err, _NOT_DAMAGE)


def _unverified(path: Path) -> None:
    key = str(path)
    if key not in _UNVERIFIED_WARNED:
        _UNVERIFIED_WARNED.add(key)
        log.warning("%s has no checksum (written before checksums or by another tool): read unverified", path)


def read_table(path: str | os.PathLike, columns: Iterable[str] | None = None, *, expect: bytes | None = None,
               error: Callable[[str], Exception] = CorruptFileError) -> pa.Table:
    """Read (some columns of) a Parquet file and verify them and its metadata against its checksum.

    A file that cannot be read or does not match is moved aside and ``error`` (naming the file and
    saying that the next run rebuilds it) is raised; a missing file raises ``FileNotFoundError``.
    ``expect``: the metadata entry the file's writer always puts there (see :func:`_record`).
    """
    path = Path(path)
    if columns is not None:  # a column the file never had is the caller's error, not damage
        columns = list(columns)
        schema = read_schema(path, expect=expect, error=error)
        record = _record(schema.metadata, expect) or {"columns": {}}
        unknown = [c for c in columns if c not in schema.names and c not in record["columns"]]
        if unknown:
            raise KeyError(f"{path} has no column(s) {unknown} (has {schema.names})")
    read = _regular_file(path)
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as err:
        if _damage(err):
            raise corrupt(path, f"unreadable: {type(err).__name__}: {err}", error, read) from err
        raise
    try:
        checked = verify_table(table, expect)
    except ValueError as err:
        raise corrupt(path, str(err), error, read) from err
    if not checked:
        _unverified(path)
    return table


def read_schema(path: str | os.PathLike, *, expect: bytes | None = None,
                error: Callable[[str], Exception] = CorruptFileError) -> pa.Schema:
    """The Arrow schema (with its key-value metadata) of a Parquet file, its metadata and row count
    verified against its checksum (the values are not read: :func:`read_table` checks those)."""
    path = Path(path)
    read = _regular_file(path)
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except Exception as err:
        if _damage(err):
            raise corrupt(path, f"unreadable: {type(err).__name__}: {err}", error, read) from err
        raise
    try:
        verify_metadata(schema.metadata, meta.num_rows, expect)
    except ValueError as err:
        raise corrupt(path, str(err), error, read) from err
    return schema


def write_table(table: pa.Table, path: str | os.PathLike,
                check: Callable[[pa.Table], None] | None = None, **write_options: Any) -> None:
    """Write ``table`` atomically (:func:`~medmix.store.atomic.atomic_path`) with its checksum.

    Before the rename the temp file is read back whole and verified, so a file that would not pass
    :func:`read_table` is never put in place; ``check`` may look at the table read back too.
    """
    table = with_checksum(table)

    def verify(tmp: Path) -> None:
        back = pq.read_table(tmp)
        try:
            if not verify_table(back):
                raise ValueError("the checksum is missing")
        except ValueError as err:
            raise OSError(f"{path}: read-back check failed: {err}") from err
        if check is not None:
            check(back)

    with atomic_path(path, verify=verify) as tmp:
        pq.write_table(table, tmp, **write_options)


# ------------------------------------------------------------------------------- pandas frames
def write_frame(frame: Any, path: str | os.PathLike) -> None:
    """A pandas frame (index dropped) as a checksummed Parquet file, written atomically."""
    write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def read_frame(path: str | os.PathLike, columns: Iterable[str] | None = None, *, expect: bytes | None = None,
               error: Callable[[str], Exception] = CorruptFileError) -> Any:
    """A Parquet file written by :func:`write_frame` (or by pandas) as a pandas frame, verified."""
    return read_table(path, columns, expect=expect, error=error).to_pandas()
