"""``tabular_raw``: the tabular feature vector as is, plus a missing-value indicator per column.

Input: the cohort's JSON list, one entry per column (``null`` = unobserved). The width comes from
the dataset: the input view records the modality's ``columns`` and, for categorical columns, their
category list (computed by the cohort step from the training rows only; stage 1 never sees the
split). Without a recorded schema (direct use) the input is ``preprocessing["n_features"]`` numbers.

Output, columns in order: a numeric column gives its value (NaN -> 0, not rescaled); a categorical
column gives a one-hot over its recorded categories followed by an "unseen" flag (1 for an
observed value outside the list, whose one-hot is then all zero). Then one missing indicator per
column (1 = empty). Dims: ``n_numeric + sum(len(categories) + 1) + n_columns``, so ``2 *
n_features`` for an all-numeric table (unchanged from before categories existed).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from extractors.base import Extractor, InputError
from extractors.inputs import read_tabular
from extractors.registry import ExpertSpec, register_expert

DEFAULT_N_FEATURES = 16


@register_expert(
    ExpertSpec(
        name="tabular_raw",
        params=0,
        cost_note="non-neural (the encoded table values themselves); FLOPs not counted",
        kinds=("tabular",),
        role="general",
        dim=2 * DEFAULT_N_FEATURES,
        preprocessing={"n_features": DEFAULT_N_FEATURES, "missing": "0 + indicator"},
        offline=True,
        description="Weight-free: numbers (NaN -> 0), one-hot categories + unseen flag, per-column missing indicators.",
        mem_mb=300,
    )
)
class TabularRaw(Extractor):
    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        schema = self.settings.input_schema
        if schema.get("columns"):
            self.columns = [str(c) for c in schema["columns"]]
            self.categories = {str(c): [str(v) for v in cats] for c, cats in (schema.get("categorical") or {}).items()}
            unknown = sorted(set(self.categories) - set(self.columns))
            if unknown:
                raise ValueError(f"tabular_raw: categorical column(s) {unknown} are not in the columns {self.columns}")
        else:
            n = self.settings.preprocessing.get("n_features")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"tabular_raw: preprocessing.n_features must be a positive integer, got {n!r}")
            self.columns, self.categories = [f"x{k}" for k in range(n)], {}
        self.n_features = len(self.columns)

    @property
    def dim(self) -> int:
        width = sum(len(self.categories[c]) + 1 if c in self.categories else 1 for c in self.columns)
        return width + self.n_features

    def prepare(self, value: Any) -> np.ndarray:
        if not self.categories:
            arr = read_tabular(value)
            if arr.size != self.n_features:
                raise InputError(f"tabular input has {arr.size} features; this expert expects {self.n_features}")
            missing = ~np.isfinite(arr)
            return np.concatenate([np.where(missing, 0.0, arr), missing]).astype(np.float32)
        cells = _cells(value)
        if len(cells) != self.n_features:
            raise InputError(f"tabular input has {len(cells)} values; the dataset's columns are {self.columns}")
        parts, missing = [], []
        for column, cell in zip(self.columns, cells, strict=True):
            absent = cell is None or (isinstance(cell, float) and math.isnan(cell))
            missing.append(float(absent))
            if column in self.categories:
                cats = self.categories[column]
                onehot = np.zeros(len(cats) + 1, np.float32)
                if not absent:
                    text = str(cell)
                    onehot[cats.index(text) if text in cats else len(cats)] = 1.0
                parts.append(onehot)
            else:
                parts.append(np.array([0.0 if absent else _number(cell, column)], np.float32))
        if all(missing):
            raise InputError("no observed tabular values")
        return np.concatenate([*parts, np.array(missing, np.float32)]).astype(np.float32)

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack(batch).astype(np.float32)


def _cells(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise InputError(f"tabular input is not a JSON list: {err}") from err
    if not isinstance(value, (list, tuple)):
        raise InputError(f"tabular input is a {type(value).__name__}, expected a list")
    return list(value)


def _number(cell: Any, column: str) -> float:
    if isinstance(cell, bool) or not isinstance(cell, (int, float)) or not math.isfinite(float(cell)):
        raise InputError(f"tabular column {column!r} holds {cell!r}, not a finite number")
    return float(cell)
