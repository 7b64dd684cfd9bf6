"""Input preparation shared by the time-series foundation-model experts (Chronos, MOIRAI).

A sample's EHR time series (CSV or Parquet, rows = time steps, columns = variables; MedMIX uses
46 clinical variables) becomes a float32 array ``[T, V]`` with NaN for missing measurements; both
models handle NaN natively as "not observed" (no imputation here). Rows are in time order (the
time column, else file order); the dataset's recorded variable list, when given, is checked and
fixes the column order (:func:`~extractors.series.load_series`). Any number of variables works:
Chronos embeds each variable and MOIRAI treats them as variates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import InputError
from extractors.inputs import read_timeseries
from extractors.series import load_series


def prepare_series(value: Any, variables: list[str] | None = None) -> np.ndarray:
    """``[T, V]`` float32, NaN = missing; infinite values are treated as missing too."""
    if variables:
        return load_series(value, len(variables), variables)
    frame = read_timeseries(value)
    arr = frame.to_numpy(dtype=np.float32, na_value=np.nan)
    arr = np.where(np.isfinite(arr), arr, np.nan).astype(np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or not np.isfinite(arr).any():
        raise InputError(f"time series {value} has no observed values")
    return arr


def right_aligned(batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``[T_i, V]`` arrays into ``[B, max T, V]`` left-padded with NaN, plus the lengths."""
    n_vars = {a.shape[1] for a in batch}
    if len(n_vars) != 1:
        raise ValueError(f"time series in one batch have different numbers of variables {sorted(n_vars)}")
    width = max(a.shape[0] for a in batch)
    out = np.full((len(batch), width, n_vars.pop()), np.nan, np.float32)
    for k, a in enumerate(batch):
        out[k, width - a.shape[0] :] = a
    return out, np.array([a.shape[0] for a in batch], np.int64)
