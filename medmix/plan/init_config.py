"""``medmix init``: a config for your cohort, inferred from its manifest table.

One row per sample (``.csv``, ``.tsv`` or ``.parquet``, read as the manifest adapter reads it:
every cell a stripped string). Each column is classified from its non-empty values:

- the label columns you name (task: one label of 0/1 values -> ``binary``, of other values ->
  ``multiclass`` over them; several labels, all 0/1 -> ``multilabel``);
- the sample id (``--id-column``, else the first of :data:`ID_COLUMNS` present, else the first
  column with a distinct value in every row), the patient (the first of :data:`PATIENT_COLUMNS`,
  else every sample is its own patient) and the split (a column named like :data:`SPLIT_COLUMNS`
  holding only train/val/test spellings; else the adapter's ``split_ratios`` by patient);
- **file paths**, by their extension (any case): images :data:`IMAGE_SUFFIXES`, volumes
  :data:`VOLUME_SUFFIXES` or folders (a DICOM series), time series :data:`SERIES_SUFFIXES`, notes
  :data:`NOTE_SUFFIXES` (``kind: text, file: true``). Paths resolve as the adapter resolves them:
  against the manifest's folder (or ``--data-root``); a file that does not exist is a missing
  modality for that sample, not an error. Each path column is one modality, named after the column
  (a ``_path`` / ``_file`` / ``_text`` suffix dropped);
- **free text** (not paths; median length >= :data:`FREE_TEXT_CHARS` characters or
  :data:`FREE_TEXT_WORDS` words): a ``text`` modality holding the text itself;
- **tabular**: numeric columns, and short text with few distinct values (at most
  :data:`MAX_CATEGORIES`, and at most half the rows) as ``categorical`` columns, all in one
  ``tabular`` modality;
- left out, with the reason: other ``*_id`` columns, columns with one value or none, short text
  with a distinct value in (nearly) every row.

:func:`infer_dataset` returns the dataset block and the reasons; :func:`build_overlay` the config
file's content (the dataset, its protocols and the runs of the base config's comparison that can
run on it); :func:`render` the YAML with its comment header. The command (``medmix.cli``)
validates the result against the base config and builds the cohort before writing it.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medmix.cohort import CohortError
from medmix.datasets.manifest import LABEL_TOKENS, SPLIT_ALIASES, read_table
from medmix.datasets.paths import resolve_inside
from medmix.plan.overlay import LARGE_REF_PREFIX, committees, variant_fits
from medmix.plan.runs import NAME_PATTERN, RESERVED_DATASET_NAMES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy", ".npz")
SERIES_SUFFIXES = (".csv", ".parquet")
NOTE_SUFFIXES = (".txt",)
ID_COLUMNS = ("sample_id", "id", "sid", "study_id", "stay_id", "case_id", "uid")
PATIENT_COLUMNS = ("patient_id", "subject_id", "patient", "pid")
SPLIT_COLUMNS = ("split", "partition", "set", "subset")
FREE_TEXT_CHARS = 30
FREE_TEXT_WORDS = 5
MAX_CATEGORIES = 50
#: Cells checked for being a folder (a DICOM series) in a column without file extensions.
FOLDER_SAMPLE = 200
#: Test-time protocols written for every cohort: random drop at these rates, drop_one at DROP_ONE_P.
RANDOM_DROP_PS = (0.3, 0.5)
DROP_ONE_P = 0.5
DEFAULT_SPLIT_RATIOS = [0.65, 0.15, 0.20]


class InitError(ValueError):
    """The manifest cannot be turned into a config; the message says what to pass or fix."""


@dataclass
class Column:
    """How one manifest column is used: ``use`` is id, patient, split, label, modality, tabular or
    ignored; ``detail`` says why (shown in the written file's header)."""

    name: str
    use: str
    detail: str
    modality: str | None = None
    kind: str | None = None

    def describe(self) -> str:
        if self.modality:
            return f"-> {self.modality} [{self.kind}]: {self.detail}"
        return f"ignored: {self.detail}" if self.use == "ignored" else self.detail


@dataclass
class Inference:
    name: str
    manifest: Path
    rows: int
    task: str
    dataset: dict[str, Any]
    columns: list[Column] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def suffix_kind(cell: str) -> str | None:
    """``image`` / ``volume`` / ``timeseries`` / ``note_file`` from a path's extension, else ``None``."""
    low = cell.lower()
    if "\n" in cell or len(cell) > 4096:
        return None
    for kind, suffixes in (("volume", VOLUME_SUFFIXES), ("image", IMAGE_SUFFIXES),
                           ("timeseries", SERIES_SUFFIXES), ("note_file", NOTE_SUFFIXES)):
        if low.endswith(suffixes):
            return kind
    return None


def _is_folder(root: Path, cell: str) -> bool:
    try:
        return resolve_inside(root, cell, "").is_dir()
    except (CohortError, OSError, ValueError):
        return False


def _path_column(values: list[str], root: Path) -> tuple[str, str] | None:
    """``(kind, reason)`` when the column holds file paths, else ``None``."""
    kinds = [suffix_kind(v) for v in values]
    known = [k for k in kinds if k]
    if known and len(known) == len(values):
        counts = Counter(known)
        kind, n = counts.most_common(1)[0]
        suffixes = sorted({_suffix(v) for v, k in zip(values, kinds, strict=True) if k == kind})
        reason = f"file paths ({', '.join(suffixes)})"
        if n < len(values):
            reason += f"; {len(values) - n} path(s) of another kind ({dict(counts)})"
        return kind, reason
    if not known:
        sample = [v for v in values if "\n" not in v][:FOLDER_SAMPLE]
        folders = sum(_is_folder(root, v) for v in sample)
        if sample and folders * 2 >= len(sample):
            return "volume_folder", f"folders ({folders} of {len(sample)} checked exist; a DICOM series each)"
    return None


def _suffix(cell: str) -> str:
    low = cell.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else Path(low).suffix


def _numeric(values: list[str]) -> bool:
    return bool(values) and bool(pd.to_numeric(pd.Series(values), errors="coerce").notna().all())


def _is_label_values(values: list[str]) -> bool:
    return all(v.lower() in LABEL_TOKENS for v in values)


def _id_like(name: str) -> bool:
    return bool(re.search(r"(^|_)(id|uid)$", name.lower())) or name.lower() in ("sid", "pid", "uid", "id")


def modality_name(column: str, taken: set[str]) -> str:
    """A modality name for ``column`` (letters, digits, ``_``; a path / file / text suffix dropped),
    distinct from ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_]+", "_", column).strip("_") or "modality"
    short = re.sub(r"_(path|paths|file|files|text)$", "", base, flags=re.IGNORECASE) or base
    for candidate in (short, base, *(f"{base}_{k}" for k in range(2, 1000))):
        if candidate not in taken:
            return candidate
    raise InitError(f"no free modality name for column {column!r}")


#: File stems that name no cohort: the dataset is then named after the manifest's folder.
GENERIC_STEMS = ("manifest", "metadata", "meta", "cohort", "data", "labels", "samples", "index")


def dataset_name(manifest: Path) -> str:
    """The default dataset name: the manifest's file stem (its folder's name for a generic stem
    such as ``manifest``), made a valid name."""
    stem = manifest.name.split(".")[0]
    if stem.lower() in GENERIC_STEMS and manifest.resolve().parent.name:
        stem = manifest.resolve().parent.name
    name = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_") or "cohort"
    return f"{name}_data" if name in RESERVED_DATASET_NAMES else name


def _find(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def infer_dataset(manifest: str | Path, labels: list[str], *, name: str | None = None, task: str | None = None,
                  id_column: str | None = None, data_root: str | Path | None = None,
                  manifest_ref: str | None = None, data_root_ref: str | None = None,
                  modality_roles: tuple[str, str] | None = None) -> Inference:
    """The ``datasets.<name>`` block for the manifest (``adapter: manifest``) and the reasons.

    ``manifest_ref`` / ``data_root_ref``: the paths as the config should hold them (relative to
    the folder Snakemake runs in); default: as given.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InitError(f"manifest {manifest} does not exist")
    try:
        table = read_table(manifest)
    except CohortError as err:
        raise InitError(str(err)) from None
    root = (Path(data_root) if data_root else manifest.parent).resolve()
    name = name or dataset_name(manifest)
    if not re.fullmatch(NAME_PATTERN, name) or name in RESERVED_DATASET_NAMES:
        raise InitError(f"dataset name {name!r}: use letters, digits and '_' only (not one of "
                        f"{RESERVED_DATASET_NAMES})")
    columns = list(table.columns)
    values = {c: [v for v in table[c].tolist() if v != ""] for c in columns}
    n = len(table)
    if n == 0:
        raise InitError(f"manifest {manifest} has no rows")
    out: list[Column] = []
    warnings: list[str] = []

    # Labels and task.
    labels = list(dict.fromkeys(labels))
    absent = [label for label in labels if label not in columns]
    if absent:
        raise InitError(f"label column(s) {absent} are not in the manifest; its columns: {columns}")
    if not labels:
        raise InitError("name at least one label column (--labels)")
    binary_values = {label: _is_label_values(values[label]) for label in labels}
    if task is None:
        if len(labels) == 1:
            task = "binary" if binary_values[labels[0]] else "multiclass"
        elif all(binary_values.values()):
            task = "multilabel"
        else:
            bad = [label for label, ok in binary_values.items() if not ok]
            raise InitError(f"labels {bad} hold values other than 0/1 (or true/false): several labels must all be 0/1 "
                            "(multilabel / multitask); for class names give ONE label column (multiclass)")
    dataset: dict[str, Any] = {"adapter": "manifest", "manifest": manifest_ref or str(manifest)}
    if data_root is not None:
        dataset["data_root"] = data_root_ref or str(data_root)
    classes = None
    if task == "multiclass":
        if len(labels) != 1:
            raise InitError(f"a multiclass task names ONE label column holding class names, got {labels}")
        classes = sorted(set(values[labels[0]]))
        if len(classes) < 2:
            raise InitError(f"label {labels[0]!r} has {len(classes)} distinct value(s); a multiclass "
                            "task needs two or more")
    else:
        for label in labels:
            if not binary_values[label]:
                odd = sorted({v for v in values[label] if v.lower() not in LABEL_TOKENS})[:5]
                raise InitError(f"label {label!r} holds values other than 0/1 (e.g. {odd}); a {task} task needs 0/1 "
                                "labels (empty = unknown), or give one label of class names with --task multiclass")
        if task == "binary" and len(labels) != 1:
            raise InitError(f"a binary task has exactly one label column, got {labels}; use multilabel or multitask")
    for label in labels:
        detail = (f"label, {len(values[label])} of {n} known" if task != "multiclass"
                  else f"label, {len(classes)} classes: {', '.join(classes)}")
        out.append(Column(label, "label", detail))

    # Sample id, patient, split.
    def unique(col: str) -> bool:
        return len(values[col]) == n and len(set(values[col])) == n

    if id_column is not None:
        if id_column not in columns:
            raise InitError(f"--id-column {id_column!r} is not in the manifest; its columns: {columns}")
        id_col = id_column
    else:
        id_col = _find(columns, ID_COLUMNS)
        if id_col is None or not unique(id_col):
            id_col = next((c for c in columns if c not in labels and unique(c)
                           and not _path_column(values[c][:50], root)),
                          None)
        if id_col is None:
            raise InitError(f"no sample id column: none of {list(ID_COLUMNS)} holds a distinct value in every row; "
                            "name one with --id-column")
    out.append(Column(id_col, "id", "sample id"))
    patient_col = _find([c for c in columns if c != id_col and c not in labels], PATIENT_COLUMNS)
    if patient_col is not None:
        out.append(Column(patient_col, "patient", f"patient id, {len(set(values[patient_col]))} patients (a patient's "
                                                  "samples stay in one split)"))
    else:
        warnings.append(f"no patient column ({', '.join(PATIENT_COLUMNS)}): each sample is its own patient; add "
                        "`patient_column` if a patient has several samples")
    split_col = None
    candidates = [c for c in columns if c not in (id_col, patient_col, *labels)]
    named_split = [c for c in candidates if c.lower() in SPLIT_COLUMNS]
    for col in named_split + [c for c in candidates if c not in named_split]:
        vals = table[col].str.lower()
        if vals.isin(list(SPLIT_ALIASES)).all() and vals.map(SPLIT_ALIASES).nunique() >= 2:
            split_col = col
            break
        if col in named_split:
            warnings.append(f"column {col!r} is not used as the split: it holds values other than train/val/test "
                            "(or empty cells)")
    dataset["id_column"] = id_col
    dataset["patient_column"] = patient_col or id_col
    if split_col is not None:
        parts = Counter(table[split_col].str.lower().map(SPLIT_ALIASES))
        dataset["split_column"] = split_col
        detail = "split: " + ", ".join(f"{parts.get(s, 0)} {s}" for s in ("train", "val", "test"))
        if not parts.get("val"):
            dataset["val_from_train"] = 0.15
            detail += "; no val rows, so val_from_train: 0.15 carves validation patients out of train"
        out.append(Column(split_col, "split", detail))
    else:
        dataset["split_ratios"] = list(DEFAULT_SPLIT_RATIOS)
        dataset["split_seed"] = 0
    dataset["task"] = task
    dataset["labels"] = labels
    if classes is not None:
        dataset["classes"] = classes

    # Inputs.
    used = {id_col, patient_col, split_col, *labels}
    modalities: dict[str, dict[str, Any]] = {}
    tab_cols: list[str] = []
    categorical: list[str] = []
    for col in columns:
        if col in used:
            continue
        vals = values[col]
        if not vals:
            out.append(Column(col, "ignored", "every cell is empty"))
            continue
        path = _path_column(vals, root)
        if path is not None:
            kind, reason = path
            mod = modality_name(col, set(modalities))
            spec: dict[str, Any]
            if kind == "note_file":
                spec = {"kind": "text", "column": col, "file": True}
            elif kind == "volume_folder":
                spec = {"kind": "volume", "column": col}
            else:
                spec = {"kind": kind, "column": col}
            modalities[mod] = spec
            present = sum(_exists(root, v) for v in vals)
            reason += f"; {present} of {n} files exist"
            if present < len(vals):
                reason += " (absent files are missing modalities)"
            if not present:
                warnings.append(f"column {col!r}: none of its {len(vals)} files exists under "
                                f"{root}; check the paths or "
                                "--data-root (as it is, the modality is missing for every sample)")
            out.append(Column(col, "modality", reason, mod, spec["kind"]))
            if kind == "image" and any(_suffix(v) == ".dcm" for v in vals):
                warnings.append(f"column {col!r}: single DICOM files (.dcm) are read as images by the image experts, "
                                "which read them with Pillow; convert them to PNG if the extraction reports them "
                                "unreadable")
            continue
        if _id_like(col):
            out.append(Column(col, "ignored", "an identifier (its name ends in id)"))
            continue
        if len(set(vals)) == 1:
            out.append(Column(col, "ignored", f"one value only ({vals[0]!r})"))
            continue
        if _numeric(vals):
            tab_cols.append(col)
            out.append(Column(col, "tabular", f"numeric, {len(vals)} of {n} filled"))
            continue
        lengths = pd.Series([len(v) for v in vals])
        words = pd.Series([len(v.split()) for v in vals])
        if lengths.median() >= FREE_TEXT_CHARS or words.median() >= FREE_TEXT_WORDS:
            mod = modality_name(col, set(modalities))
            modalities[mod] = {"kind": "text", "column": col}
            out.append(Column(col, "modality", f"free text (median {int(lengths.median())} characters), "
                                               f"{len(vals)} of {n} filled", mod, "text"))
            continue
        distinct = len(set(vals))
        if distinct <= min(MAX_CATEGORIES, max(2, len(vals) // 2)):
            tab_cols.append(col)
            categorical.append(col)
            out.append(Column(col, "tabular", f"categorical, {distinct} values: "
                                              f"{', '.join(sorted(set(vals))[:6])}{', ...' if distinct > 6 else ''}"))
            continue
        out.append(Column(col, "ignored", f"short text with {distinct} distinct values in {len(vals)} rows: an "
                                          "identifier, or text too short to tell; declare it "
                                          "yourself if it is an input"))
    if tab_cols:
        mod = modality_name("tabular", set(modalities))
        modalities[mod] = {"kind": "tabular", "columns": tab_cols,
                           **({"categorical": categorical} if categorical else {})}
        for c in out:
            if c.use == "tabular":
                c.modality, c.kind = mod, "tabular"
    if not modalities:
        raise InitError(f"no input column found in {manifest}: expected file paths, free text or tabular columns "
                        f"besides the id, patient, split and label columns ({[c.name for c in out]})")
    if modality_roles is not None:
        unknown = [m for m in modality_roles if m not in modalities]
        if unknown:
            raise InitError(f"--modality-roles: {unknown} are not modalities of the cohort ({sorted(modalities)})")
        dataset["modality_roles"] = {"primary": modality_roles[0], "secondary": modality_roles[1]}
    dataset["modalities"] = modalities
    order = {c: i for i, c in enumerate(columns)}
    out.sort(key=lambda c: order[c.name])
    return Inference(name=name, manifest=manifest, rows=n, task=task, dataset=dataset, columns=out, warnings=warnings)


def _exists(root: Path, cell: str) -> bool:
    try:
        return resolve_inside(root, cell, "").exists()
    except (CohortError, OSError, ValueError):
        return False


def build_overlay(inf: Inference, base: dict[str, Any]) -> dict[str, Any]:
    """The config file's content: the dataset, generic test protocols, the base's comparison
    (``methods``) that can run on the cohort, its sweep over the cohort (2 to 6 modalities) and
    the missing grid only with modality roles."""
    if inf.name in (base.get("datasets") or {}):
        raise InitError(f"dataset name {inf.name!r} is a dataset of the base config already; choose another with "
                        "--name (a config naming only the base's datasets adjusts them, it does not replace them)")
    mods = list(inf.dataset["modalities"])
    probe = {**base, "datasets": {inf.name: inf.dataset}}
    teams = committees(probe, inf.dataset)
    variants = base.get("variants") or {}

    def runnable(run: str) -> bool:
        if run in variants:
            return variant_fits(variants[run], teams)
        return not run.startswith(LARGE_REF_PREFIX)

    teachers = [f"{LARGE_REF_PREFIX}{m}" for m in mods if teams[m][1]]
    methods: list[str] = []
    for run in base.get("methods") or []:
        if run.startswith(LARGE_REF_PREFIX) and run not in variants:
            methods += [t for t in teachers if t not in methods]  # the base's references, for this cohort's teachers
        elif runnable(run):
            methods.append(run)
    test = {"none": {"kind": "none"}}
    for p in RANDOM_DROP_PS:
        test[f"random_drop_{round(p * 100)}"] = {"kind": "random_drop", "p": p}
    for m in mods:
        test[f"drop_one_{m}_{round(DROP_ONE_P * 100)}"] = {"kind": "drop_one", "modality": m, "p": DROP_ONE_P}
    base_sweep = base.get("sweep") or {}
    sweep_methods = [r for r in base_sweep.get("methods") or [] if runnable(r)]
    if 2 <= len(mods) <= 6 and sweep_methods:
        sweep: dict[str, Any] = {"methods": sweep_methods, "datasets": [inf.name]}
        if "n_seeds" in base_sweep:
            sweep["n_seeds"] = base_sweep["n_seeds"]
    else:
        sweep = {"methods": []}
    grid = base.get("missing_grid") or {}
    missing_grid = ({"methods": list(grid.get("methods") or [])} if "modality_roles" in inf.dataset
                    else {"methods": []})
    return {
        "datasets": {inf.name: copy.deepcopy(inf.dataset)},
        "methods": methods,
        "protocols": {"train": {"none": {"kind": "none"}}, "test": test},
        "sweep": sweep,
        "missing_grid": missing_grid,
    }


def render(overlay: dict[str, Any], inf: Inference, *, command: str, manifest_ref: str, base_ref: str,
           experts: dict[str, str] | None = None) -> str:
    """The YAML file: a comment header (what was inferred from which column, the next command),
    then ``overlay``. ``command``: the snakemake command that runs it; ``experts``: modality -> its
    committee in words (from the validated config)."""
    width = min(24, max(len(c.name) for c in inf.columns))
    lines = [
        f"# medmix config for the cohort `{inf.name}`, written by `medmix init` from {manifest_ref}",
        f"# ({inf.rows} rows; paths in it resolve against "
        f"{'data_root' if 'data_root' in inf.dataset else 'its folder'}, as the manifest adapter resolves them).",
        "# Inferred from the columns (check them; edit this file to change any choice):",
    ]
    lines += [f"#   {c.name:<{width}}  {c.describe()}" for c in inf.columns]
    ds = inf.dataset
    split = (f"split column {ds['split_column']!r}" if "split_column" in ds
             else f"split by patient, ratios {ds['split_ratios']} (seed {ds['split_seed']})")
    lines.append(f"# Task {inf.task} over {len(ds['labels'])} label(s); {split}.")
    if experts:
        lines.append(f"# Committees (the active expert profile of {base_ref}):")
        lines += [f"#   {m}: {team}" for m, team in experts.items()]
    grid = "on (modality_roles)" if overlay["missing_grid"]["methods"] else "off (no modality_roles)"
    sweep = f"over {inf.name}" if overlay["sweep"]["methods"] else "off"
    lines += [
        f"# Runs: {base_ref}'s comparison that can run on these modalities; test protocols random_drop "
        f"{'/'.join(str(p) for p in RANDOM_DROP_PS)} and drop_one {DROP_ONE_P} per modality; modality sweep {sweep}; "
        f"CP-IMoE missing grid {grid}.",
    ]
    for w in inf.warnings:
        lines.append(f"# Note: {w}")
    lines += [
        f"# Merged over {base_ref} (experts, training, seeds); as this file declares `datasets`, the demo's",
        "# datasets and cohorts are not inherited (include_demo: auto). Next:",
        f"#   {command}",
        "",
    ]
    body = yaml.safe_dump(overlay, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(lines) + "\n" + body
