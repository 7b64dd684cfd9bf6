"""Input schemas the cohort step records per modality (handed to stage 1 in the input view).

- **Series** (``kind: timeseries``): the variable list, declared (``variables: [...]`` in the
  modality block) or inferred from the headers of the dataset's series files: the commonest
  variable set (ties: the one seen first), in the column order of the first file holding it.
  Time columns (``time``/``hour``/``charttime``) are never variables. Reading headers needs
  neither labels nor splits. Files with another set are listed in a cohort warning; the series
  experts record them missing with the reason.
- **Tables** (``kind: tabular``): the columns and, per categorical column, its categories: the
  sorted distinct non-empty values of the **training** rows only (the cohort step knows the split,
  stage 1 does not).
- **External datasets** take the schemas of the development dataset that lists them
  (:func:`adopt_reference`), so their features have the same width and encoding as the data the
  models were trained on.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from medmix.cohort import Cohort, CohortError
from medmix.store.inputs import TIME_COLUMNS

#: Sample ids listed in a schema warning.
N_LISTED = 5


def declared_variables(where: str, mod: str, spec: dict[str, Any]) -> list[str] | None:
    """The modality's ``variables: [...]``, checked (unique names, no time column), or ``None``."""
    variables = spec.get("variables")
    if variables is None:
        return None
    names = [str(v) for v in variables]
    if not names or len(set(names)) != len(names):
        raise CohortError(f"{where}: modality {mod!r}: `variables` must list distinct names, got {variables!r}")
    timed = [v for v in names if v.strip().lower() in TIME_COLUMNS]
    if timed:
        raise CohortError(f"{where}: modality {mod!r}: {timed} name a time column ({TIME_COLUMNS}), not a variable")
    return names


def _csv_header(path: Path) -> list[str]:
    """A CSV's column names as ``pandas.read_csv`` names them. The header line is read with the
    ``csv`` module (planning reads one per series file, and pandas costs ~1 ms each); a header
    pandas would treat otherwise (blank first line, empty or duplicate names) is left to pandas."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        names = next(csv.reader(fh), [])
    if not names or not all(n.strip() for n in names) or len(set(names)) != len(names):
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]  # blank first line, odd names, empty file
    return names


def series_header(path: str | Path) -> list[str] | None:
    """The variable columns of a CSV/Parquet series file (time columns left out); ``None`` if unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            names = list(pq.read_schema(path).names)
        else:
            names = _csv_header(path)
    except (OSError, ValueError, UnicodeDecodeError):  # the expert's reader records it absent
        return None
    return [n for n in names if n.strip().lower() not in TIME_COLUMNS]


def series_schema(where: str, mod: str, spec: dict[str, Any], ids: list[str], paths: list[str | None]
                  ) -> tuple[dict[str, Any], list[str]]:
    """The series modality's schema (``{"variables": [...]}``) and warnings about odd files."""
    declared = declared_variables(where, mod, spec)
    headers = {sid: series_header(p) for sid, p in zip(ids, paths, strict=True) if p}
    readable = {sid: h for sid, h in headers.items() if h is not None}
    if declared is not None:
        variables, source = declared, "declared"
    elif readable:
        counts = Counter(frozenset(h) for h in readable.values())
        best = max(counts.values())
        first = next(h for h in readable.values() if counts[frozenset(h)] == best)
        variables, source = first, "inferred"
    else:
        return {}, []
    others = [sid for sid, h in readable.items() if set(h) != set(variables)]
    warnings = []
    if others:
        warnings.append(
            f"modality {mod!r}: {len(others)} series file(s) have another variable set than the dataset's "
            f"{len(variables)} {source} variables (e.g. {', '.join(others[:N_LISTED])}); the series experts "
            "record them missing"
        )
    return {"variables": variables, "source": source}, warnings


def categorical_columns(where: str, mod: str, spec: dict[str, Any], block: pd.DataFrame) -> list[str]:
    """Declared categorical columns, plus non-numeric ones when ``infer_categorical: true``."""
    columns = list(spec["columns"])
    declared = [str(c) for c in spec.get("categorical") or []]
    unknown = [c for c in declared if c not in columns]
    if unknown:
        raise CohortError(f"{where}: modality {mod!r}: categorical column(s) {unknown} are not in "
                          f"its columns {columns}")
    if not spec.get("infer_categorical"):
        return declared
    numbers = block.apply(pd.to_numeric, errors="coerce")
    text = (numbers.isna() & block.ne("")).any()
    return declared + [c for c in columns if c not in declared and bool(text[c])]


def tabular_schema(columns: list[str], categorical: list[str], block: pd.DataFrame, train: pd.Series
                   ) -> tuple[dict[str, Any], list[str]]:
    """``{"columns", "categorical": {column: training categories}}`` and warnings."""
    schema: dict[str, Any] = {"columns": list(columns)}
    warnings = []
    if categorical:
        cats = {}
        for col in categorical:
            values = block.loc[train.to_numpy(), col]
            cats[col] = sorted(set(values[values.ne("")]))
            if not cats[col]:
                warnings.append(f"categorical column {col!r} has no value in the training rows: "
                                "every value is 'unseen'")
        schema["categorical"] = cats
    return schema, warnings


def adopt_reference(cohort: Cohort, reference: dict[str, dict[str, Any]], reference_name: str) -> Cohort:
    """Give an external cohort the schemas of the development dataset ``reference_name``.

    Tables must have the same columns (else :class:`CohortError`); a series takes the reference's
    variables (its own samples with another set are then recorded missing by the experts).
    """
    warnings = list(cohort.extra.get("warnings", []))
    for mod, ref in reference.items():
        if mod not in cohort.modalities or not ref:
            continue
        own = cohort.schemas.get(mod) or {}
        if cohort.modalities[mod] == "tabular" and own.get("columns") and own["columns"] != ref.get("columns"):
            raise CohortError(
                f"dataset {cohort.name!r}: tabular modality {mod!r} has columns {own['columns']}, but the development "
                f"dataset {reference_name!r} that lists it as external has {ref.get('columns')}"
            )
        if cohort.modalities[mod] == "timeseries" and own.get("variables") and set(own["variables"]) != set(
                ref.get("variables", [])):
            warnings.append(f"modality {mod!r}: its series variables differ from those of {reference_name!r}, whose "
                            "list is used; series without them are recorded missing")
        cohort.schemas[mod] = {**ref, "from": reference_name}
    if warnings:
        cohort.extra["warnings"] = warnings
    return cohort
