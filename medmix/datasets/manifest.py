"""The generic manifest adapter: one row per sample, columns named in config.

Config keys (``datasets.<name>`` in config.yaml; see medmix/datasets/README.md):

- ``manifest``: a ``.csv`` or ``.parquet`` file; relative paths in it resolve against its folder
  (or against ``data_root`` when given) and may not leave that folder.
- ``id_column`` / ``patient_column``: sample and patient identifiers (splits are by patient).
- ``split_column`` (optional, values train/val/test, also validation/valid/dev/training/testing);
  otherwise ``split_ratios`` + ``split_seed`` give a deterministic patient-level split.
  ``val_from_train`` (a fraction) carves a validation set out of the training patients when the
  split column has no validation rows.
- ``task``: multilabel | binary | multiclass | multitask.
- ``labels``: 0/1 label columns (empty = unknown); for multiclass ONE column holding class names,
  with ``classes: [...]`` (and optionally ``class_map: {raw value: class}``) giving the one-hot
  ``label:<class>`` columns. ``label_map`` maps other spellings (``yes``/``dead``...) to 0/1.
- ``modalities``: ``{name: {kind, column}}`` with kinds image, text, timeseries, volume, slide,
  or ``{kind: tabular, columns: [...]}``; ``{kind: text, column, file: true}`` reads the note from
  a text file named in the cell. A timeseries modality may declare ``variables: [...]`` (else they
  are inferred from the files' headers); a tabular one ``categorical: [...]`` columns (or
  ``infer_categorical: true``), one-hot encoded over their training-split categories
  (:mod:`medmix.datasets.schema`).
- ``role: external``: every row is evaluation data (split ``test``); split settings are ignored
  with a note.

An empty cell (a null of any type in a Parquet manifest: ``None``, NaN, ``pd.NA``), or a file
that does not exist, makes the modality missing for that sample; an empty / null label is unknown.
Absent files are recorded per modality in ``cohort.extra["absent_files"]`` and reported by the
summary. A note file that cannot be used (empty or whitespace only, not UTF-8, larger than
``MAX_NOTE_BYTES``, a directory, not a file) and a path cell that is a symbolic-link loop also make
the modality missing for that sample; the reason, naming the file, is recorded in
``cohort.extra["unusable_files"]`` (``{modality: {sample_id: reason}}``), logged by
``prepare_dataset`` and listed by the summary.

A CSV/TSV manifest is read strictly (:func:`read_table`): a row with more or fewer fields than the
header, a column name given twice, bad quoting or non-UTF-8 bytes stop the build with the file and
the 1-based line named.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmix.cohort import INPUT_PREFIX, LABEL_PREFIX, SPLITS, TASKS, Cohort, CohortError
from medmix.datasets import register_adapter
from medmix.datasets.paths import config_path, resolve_inside
from medmix.datasets.schema import categorical_columns, series_schema, tabular_schema

PATH_KINDS = ("image", "timeseries", "volume", "slide")
KINDS = (*PATH_KINDS, "text", "tabular")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
LABEL_TOKENS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}
MAX_NOTE_BYTES = 10 * 1024 * 1024
MAX_LISTED = 10


@register_adapter("demo")
@register_adapter("manifest")
def load_manifest_dataset(name: str, cfg: dict[str, Any], base_dir: Path) -> Cohort:
    """Build the cohort of a manifest-declared dataset (see the module docstring for the keys)."""
    if not cfg.get("manifest"):
        raise CohortError(f"dataset {name!r}: config lacks 'manifest' (path to a .csv or .parquet file)")
    manifest = config_path(base_dir, cfg["manifest"])
    if not manifest.is_file():
        raise CohortError(f"dataset {name!r}: manifest {manifest} does not exist")
    table = read_table(manifest, f"dataset {name!r} (manifest {manifest.resolve()})")
    root = config_path(base_dir, cfg["data_root"]) if cfg.get("data_root") else manifest.parent
    return cohort_from_table(name, table, cfg, root.resolve(), extra={"manifest": str(manifest.resolve())})


def read_table(path: Path, where: str | None = None) -> pd.DataFrame:
    """A CSV or Parquet table with every cell as a stripped string ('' for empty / null).

    Nulls mean the same in both formats: an empty CSV cell and a Parquet null (``None``, NaN,
    ``pd.NA``, ``NaT`` in any column type) are both ''. A CSV is read strictly: a row with more or
    fewer fields than the header (an unquoted comma shifts every column), a column name given
    twice (pandas would rename the second ``x.1``) or a file the parser cannot read is a
    :class:`CohortError` naming the file (``where``, default ``manifest <path>``) and the line.
    """
    where = where or f"manifest {path}"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = list(pq.read_schema(path).names)
            _check_header(where, names, "the Parquet schema")
            return as_strings(pd.read_parquet(path))
        except CohortError:
            raise
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise CohortError(f"{where}: unreadable Parquet file: {type(err).__name__}: {err}") from err
    if suffix not in (".csv", ".tsv"):
        raise CohortError(f"{path}: unsupported manifest format {path.suffix!r} (use .csv, .tsv or .parquet)")
    sep = "\t" if suffix == ".tsv" else ","
    _check_csv_shape(path, where, sep)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise CohortError(f"{where}: unreadable {suffix[1:].upper()} file: {type(err).__name__}: {err}") from err
    return as_strings(table)


def _check_header(where: str, names: list[str], what: str) -> None:
    """Refuse a column name given twice (pandas would silently rename the second one ``x.1``)."""
    seen: dict[str, int] = {}
    for k, name in enumerate(names, start=1):
        if name in seen:
            raise CohortError(f"{where}: column name {name!r} appears twice in {what} (columns {seen[name]} and "
                              f"{k}); rename one of them")
        seen[name] = k


def _check_csv_shape(path: Path, where: str, sep: str) -> None:
    """The file is UTF-8, the header has distinct names and every data row as many fields as the
    header (blank lines are skipped, as pandas skips them); else a :class:`CohortError` with the
    1-based line number."""
    import csv
    import io

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is fine
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise CohortError(f"{where}: line {line} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start}); save the file as UTF-8") from err
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    header: list[str] | None = None
    header_line = start = 1  # start: the line the next record starts on
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:  # a blank line
                continue
            if header is None:
                header, header_line = fields, line
                _check_header(where, fields, f"the header (line {line})")
                continue
            if len(fields) != len(header):
                raise CohortError(
                    f"{where}: line {line} has {len(fields)} fields, the header (line {header_line}) has "
                    f"{len(header)}; every row needs one field per column, and a cell holding "
                    f"{'a tab' if sep == chr(9) else 'a comma'} must be quoted (\"...\")"
                )
    except csv.Error as err:
        raise CohortError(f"{where}: unreadable {'TSV' if sep == chr(9) else 'CSV'} at line {start}: {err}") from err


def as_strings(table: pd.DataFrame) -> pd.DataFrame:
    """Every cell as a stripped string; a null of any type (None, NaN, ``pd.NA``, ``NaT``) becomes ''."""

    def cell(value: Any) -> str:
        if isinstance(value, str):  # the common case first
            return value.strip()
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            return ""
        return str(value).strip()

    return table.apply(lambda col: col.map(cell)) if len(table.columns) else table


def cohort_from_table(
    name: str,
    table: pd.DataFrame,
    cfg: dict[str, Any],
    root: Path,
    extra: dict[str, Any] | None = None,
) -> Cohort:
    """Validate a string table against the manifest config and turn it into a :class:`Cohort`.

    ``table`` holds stripped strings ('' = empty); ``root`` is the folder that relative paths in
    the table resolve against (and must stay inside). Adapters for named datasets build such a
    table and call this, so every dataset obeys the same rules.
    """
    source = (extra or {}).get("manifest")
    where = f"dataset {name!r}" + (f" (manifest {source})" if source else "")
    task = cfg.get("task")
    if task not in TASKS:
        raise CohortError(f"{where}: task {task!r} not in {TASKS}")
    label_cols = list(cfg.get("labels") or [])
    if not label_cols:
        raise CohortError(f"{where}: config lists no 'labels'")
    modalities = cfg.get("modalities") or {}
    if not modalities:
        raise CohortError(f"{where}: config lists no 'modalities'")
    id_col = cfg.get("id_column") or "sample_id"
    pat_col = cfg.get("patient_column", "patient_id")
    external = "external" in (cfg.get("role"), (extra or {}).get("role"))
    split_col = None if external else cfg.get("split_column")
    _check_columns(where, table, id_col, pat_col, split_col, label_cols, modalities)

    table = as_strings(table.reset_index(drop=True))
    ids = table[id_col].astype(str)
    rows = _RowNamer(ids)
    empty_ids = np.flatnonzero(ids.eq("").to_numpy())
    if len(empty_ids):
        raise CohortError(f"{where}: empty {id_col!r} in {rows.name(empty_ids)}")
    dup = np.flatnonzero(ids.duplicated(keep=False).to_numpy())
    if len(dup):
        raise CohortError(f"{where}: duplicate sample ids in column {id_col!r}: {rows.name(dup)}")
    patients = ids.copy() if pat_col is None else table[pat_col].astype(str)
    empty_pat = np.flatnonzero(patients.eq("").to_numpy())
    if len(empty_pat):
        raise CohortError(f"{where}: empty patient id ({pat_col!r}) in {rows.name(empty_pat)}")

    out = pd.DataFrame({"sample_id": ids, "patient_id": patients})
    info = dict(extra or {})
    warnings = list(info.get("warnings", []))
    if external:
        out["split"] = "test"
        info["split"] = (f"external dataset: all {len(out)} rows are evaluation data; split settings "
                         "(split_column, split_ratios, split_seed, val_from_train) are ignored")
    else:
        out["split"] = _splits(where, table, cfg, split_col, patients, rows)
    labels, label_frame = _labels(where, table, task, label_cols, cfg, rows)
    out = pd.concat([out, label_frame], axis=1)

    kinds: dict[str, str] = {}
    schemas: dict[str, dict[str, Any]] = {}
    absent: dict[str, dict[str, str]] = {}
    unusable: dict[str, dict[str, str]] = {}
    for mod, spec in modalities.items():
        kind = spec.get("kind")
        if kind not in KINDS:
            raise CohortError(f"{where}: modality {mod!r} has kind {kind!r}; known kinds: {KINDS}")
        kinds[mod] = kind
        if kind == "tabular":
            block = table[list(spec["columns"])].astype(str)
            categorical = categorical_columns(where, mod, spec, block)
            out[INPUT_PREFIX + mod] = _tabular_cells(where, mod, block, categorical, rows)
            schemas[mod], notes = tabular_schema(list(spec["columns"]), categorical, block, out["split"].eq("train"))
            warnings += [f"modality {mod!r}: {n}" for n in notes]
            continue
        cells = table[spec["column"]].astype(str)
        if kind in PATH_KINDS or (kind == "text" and spec.get("file")):
            values, missing_files, bad_files = _path_cells(where, mod, ids, cells, root, read_text=(kind == "text"))
            out[INPUT_PREFIX + mod] = values
            if missing_files:
                absent[mod] = missing_files
            if bad_files:
                unusable[mod] = bad_files
        else:
            out[INPUT_PREFIX + mod] = [c if c else None for c in cells]
        if kind == "timeseries":
            paths = [None if v is None or v != v else v for v in out[INPUT_PREFIX + mod].tolist()]
            schema, notes = series_schema(where, mod, spec, ids.tolist(), paths)
            if schema:
                schemas[mod] = schema
            warnings += notes

    info["absent_files"] = {**info.get("absent_files", {}), **absent}
    if warnings:
        info["warnings"] = warnings
    if unusable or info.get("unusable_files"):
        info["unusable_files"] = {**info.get("unusable_files", {}), **unusable}
    if cfg.get("role") and "role" not in info:
        info["role"] = cfg["role"]
    cohort = Cohort(name, task, labels, kinds, out, info, schemas)
    cohort.validate()
    return cohort


def patient_split(patients: pd.Series, ratios: list[float], seed: int) -> list[str]:
    """Deterministic split by patient: shuffle the sorted unique patients with ``seed``, cut by ``ratios``.

    Cut points are the rounded cumulative fractions, so each part is within one patient of its share.
    """
    if len(ratios) != len(SPLITS) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise CohortError(f"split_ratios {ratios} must be {len(SPLITS)} non-negative numbers (train, val, test)")
    uniq = np.array(sorted(set(patients)))
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    cuts = np.round(np.cumsum(ratios)[:-1] / np.sum(ratios) * len(uniq)).astype(int)
    assign = {}
    for part, chunk in zip(SPLITS, np.split(uniq, cuts), strict=True):
        for p in chunk:
            assign[p] = part
    return [assign[p] for p in patients]


class _RowNamer:
    """Names rows in error messages: 1-based data row (header excluded) and sample id."""

    def __init__(self, ids: pd.Series):
        self.ids = ids.tolist()

    def name(self, positions, detail: dict[int, str] | None = None) -> str:
        positions = [int(p) for p in positions]
        parts = []
        for p in positions[:MAX_LISTED]:
            text = f"row {p + 1} (id {self.ids[p]!r})" if self.ids[p] else f"row {p + 1}"
            if detail and p in detail:
                text += f": {detail[p]}"
            parts.append(text)
        more = f" and {len(positions) - MAX_LISTED} more" if len(positions) > MAX_LISTED else ""
        return ", ".join(parts) + more


def _check_columns(where, table, id_col, pat_col, split_col, label_cols, modalities) -> None:
    wanted = {id_col: "id_column"}
    if pat_col is not None:
        wanted[pat_col] = "patient_column"
    if split_col:
        wanted[split_col] = "split_column"
    for col in label_cols:
        wanted.setdefault(col, "labels")
    for mod, spec in modalities.items():
        if not isinstance(spec, dict):
            raise CohortError(f"{where}: modality {mod!r} must be a mapping with 'kind' and 'column'")
        if spec.get("kind") == "tabular":
            if not spec.get("columns"):
                raise CohortError(f"{where}: tabular modality {mod!r} needs 'columns: [...]'")
            for col in spec["columns"]:
                wanted.setdefault(col, f"modalities.{mod}.columns")
        elif not spec.get("column"):
            raise CohortError(f"{where}: modality {mod!r} needs 'column'")
        else:
            wanted.setdefault(spec["column"], f"modalities.{mod}.column")
    missing = [f"{col!r} ({key})" for col, key in wanted.items() if col not in table.columns]
    if missing:
        raise CohortError(
            f"{where}: manifest lacks configured column(s) {', '.join(missing)}; it has {list(table.columns)}"
        )


def _splits(where, table, cfg, split_col, patients: pd.Series, rows: _RowNamer) -> list[str]:
    if not split_col:
        ratios = list(cfg.get("split_ratios") or [0.65, 0.15, 0.20])
        return patient_split(patients, ratios, int(cfg.get("split_seed", 0)))
    raw = table[split_col].astype(str)
    split = raw.str.lower().map(SPLIT_ALIASES)
    bad = np.flatnonzero(split.isna().to_numpy())
    if len(bad):
        detail = {int(p): f"{raw.iloc[p]!r}" for p in bad}
        raise CohortError(
            f"{where}: unknown split value(s) in column {split_col!r} (expected train/val/test): "
            f"{rows.name(bad, detail)}"
        )
    per_patient = pd.DataFrame({"p": patients, "s": split}).groupby("p")["s"].nunique()
    leaky = set(per_patient[per_patient > 1].index)
    if leaky:
        pos = np.flatnonzero(patients.isin(leaky).to_numpy())
        detail = {int(p): f"patient {patients.iloc[p]!r} in {split.iloc[p]}" for p in pos}
        raise CohortError(
            f"{where}: {len(leaky)} patient(s) appear in more than one split: {rows.name(pos, detail)}"
        )
    split = split.tolist()
    frac = cfg.get("val_from_train")
    if frac and "val" not in split:
        train_pat = patients[[s == "train" for s in split]]
        carved = dict(zip(train_pat, patient_split(train_pat, [1 - float(frac), float(frac), 0.0],
                                                   int(cfg.get("split_seed", 0))), strict=True))
        split = [carved.get(p, s) if s == "train" else s for p, s in zip(patients, split, strict=True)]
    return split


def _labels(where, table, task, label_cols, cfg, rows: _RowNamer) -> tuple[list[str], pd.DataFrame]:
    if task == "multiclass":
        return _multiclass(where, table, label_cols, cfg, rows)
    if task == "binary" and len(label_cols) != 1:
        raise CohortError(f"{where}: a binary task has exactly one label column, got {label_cols}")
    label_map = {str(k).strip().lower(): float(v) for k, v in (cfg.get("label_map") or {}).items()}
    bad_map = {k: v for k, v in label_map.items() if v not in (0.0, 1.0)}
    if bad_map:
        raise CohortError(f"{where}: label_map must map to 0 or 1, got {bad_map}")
    tokens = {**LABEL_TOKENS, **label_map}
    frame = pd.DataFrame(index=table.index)
    for col in label_cols:
        raw = table[col].astype(str)
        lowered = raw.str.lower()
        values = lowered.map(tokens)
        bad = np.flatnonzero((values.isna() & raw.ne("")).to_numpy())
        if len(bad):
            detail = {int(p): f"{raw.iloc[p]!r}" for p in bad}
            raise CohortError(f"{where}: label {col!r} outside {{0, 1}} (empty = unknown): {rows.name(bad, detail)}")
        frame[LABEL_PREFIX + col] = values.astype("float64")
    return label_cols, frame


def _multiclass(where, table, label_cols, cfg, rows: _RowNamer) -> tuple[list[str], pd.DataFrame]:
    if len(label_cols) != 1:
        raise CohortError(f"{where}: a multiclass task names ONE label column (holding class names), got {label_cols}")
    classes = [str(c) for c in cfg.get("classes") or []]
    if len(classes) < 2:
        raise CohortError(f"{where}: a multiclass task needs 'classes: [...]' with at least two class names")
    if len(set(classes)) != len(classes):
        raise CohortError(f"{where}: duplicate names in classes {classes}")
    class_map = {str(k).strip(): str(v) for k, v in (cfg.get("class_map") or {}).items()}
    unknown_targets = sorted(set(class_map.values()) - set(classes))
    if unknown_targets:
        raise CohortError(f"{where}: class_map maps to {unknown_targets}, which are not in classes {classes}")
    raw = table[label_cols[0]].astype(str)
    mapped = raw.map(lambda v: class_map.get(v, v))
    bad = np.flatnonzero((~mapped.isin(classes) & raw.ne("")).to_numpy())
    if len(bad):
        detail = {int(p): f"{raw.iloc[p]!r}" for p in bad}
        raise CohortError(
            f"{where}: label {label_cols[0]!r} outside classes {classes} (empty = unknown): {rows.name(bad, detail)}"
        )
    frame = pd.DataFrame(index=table.index)
    unknown = raw.eq("")
    for cls in classes:
        frame[LABEL_PREFIX + cls] = np.where(unknown, np.nan, (mapped == cls).astype("float64"))
    return classes, frame


def _tabular_cells(where, mod, block: pd.DataFrame, categorical: list[str], rows: _RowNamer) -> list[str | None]:
    """JSON lists (numbers, or the raw text of categorical columns; null = empty); None when all empty."""
    columns = list(block.columns)
    numbers = block.apply(pd.to_numeric, errors="coerce")
    bad_mask = (numbers.isna() & block.ne("")).to_numpy().copy()  # writable: categorical columns are cleared
    bad_mask[:, [columns.index(c) for c in categorical]] = False
    bad = np.flatnonzero(bad_mask.any(axis=1))
    if len(bad):
        detail = {int(p): ", ".join(f"{c}={block.iloc[p][c]!r}" for c, b in zip(columns, bad_mask[p], strict=True) if b)
                  for p in bad}
        text_cols = [c for c, b in zip(columns, bad_mask.any(axis=0), strict=True) if b]
        raise CohortError(
            f"{where}: tabular modality {mod!r} has non-numeric values: {rows.name(bad, detail)}. If {text_cols} "
            f"hold categories, declare them (`modalities.{mod}.categorical: {text_cols}`) or set "
            f"`modalities.{mod}.infer_categorical: true`"
        )
    cells: list[str | None] = []
    for k in range(len(block)):
        row: list[Any] = []
        for c in columns:
            raw = block.iat[k, columns.index(c)]
            if raw == "":
                row.append(None)
            elif c in categorical:
                row.append(raw)
            else:
                value = float(numbers.iat[k, columns.index(c)])
                row.append(None if math.isnan(value) else value)
        cells.append(None if all(v is None for v in row) else json.dumps(row))
    return cells


def _path_cells(where, mod, ids: pd.Series, cells: pd.Series, root: Path, read_text: bool):
    """Resolve path cells inside ``root``; absent files (and unusable note files) become missing.

    Returns the cell values, ``{sample_id: path}`` of absent files and ``{sample_id: reason}`` of
    note files that exist but cannot be used.
    """
    values: list[str | None] = []
    absent: dict[str, str] = {}
    unusable: dict[str, str] = {}
    for pos, (sid, cell) in enumerate(zip(ids, cells, strict=True)):
        if not cell:
            values.append(None)
            continue
        row = f"{where}: modality {mod!r}, row {pos + 1} (id {sid!r})"
        loop = _symlink_loop(root, cell, row)
        if loop is not None:
            unusable[sid] = f"path {loop} is a symlink loop (too many levels of symbolic links); it names no file"
            values.append(None)
            continue
        path = resolve_inside(root, cell, row)
        if not path.exists():
            absent[sid] = str(path)
            values.append(None)
        elif read_text:
            text, reason = read_note(path)
            if reason:
                unusable[sid] = reason
            values.append(text)
        else:
            values.append(str(path))
    return values, absent, unusable


def _symlink_loop(root: Path, cell: str, row: str) -> Path | None:
    """The cell's path (normalised, links not followed) when it is a symbolic-link loop, else ``None``.

    A loop names no file: the sample's modality is missing with that reason (resolving it would
    raise on Python < 3.13). One that lies outside ``root`` is still refused like any other escape.
    """
    root = Path(root).resolve()
    path = root / cell
    try:
        os.stat(path)
    except OSError as err:
        if err.errno != errno.ELOOP:
            return None
        lexical = Path(os.path.normpath(path))
        if lexical != root and root not in lexical.parents:
            raise CohortError(f"{row}: path {cell!r} leads to {lexical}, outside the data folder {root}") from None
        return lexical
    return None


def read_note(path: Path) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable UTF-8 note file, else ``(None, reason naming the file)``.

    A UTF-8 byte-order mark is dropped; the text is stripped of surrounding whitespace.
    """
    if path.is_dir():
        return None, f"note path {path} is a directory, not a file"
    if not path.is_file():
        return None, f"note path {path} is not a file"
    size = path.stat().st_size
    if size > MAX_NOTE_BYTES:
        return None, f"note file {path} has {size} bytes, more than the limit of {MAX_NOTE_BYTES} (MAX_NOTE_BYTES)"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return None, (f"note file {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                      "save it as UTF-8")
    text = text.strip()
    if not text:
        return None, f"empty text: note file {path} is " + ("empty (0 bytes)" if not raw else "whitespace only")
    return text, None
