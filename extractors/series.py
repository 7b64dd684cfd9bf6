"""Reading multivariate series for the weight-free series experts (a helper, not an expert)."""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import InputError
from extractors.inputs import read_timeseries

N_VARIABLES = 46


def load_series(value: Any, n_variables: int) -> np.ndarray:
    """A ``[T, n_variables]`` float32 array (NaN = unobserved) from a path, DataFrame or array."""
    if isinstance(value, np.ndarray):
        arr = value.astype(np.float32, copy=False)
        if arr.ndim != 2:
            raise InputError(f"time-series array has shape {value.shape}; expected [T, variables]")
        if not np.isfinite(arr).any():
            raise InputError("time series has no observed values")
        name = "time-series array"
    else:
        if hasattr(value, "columns"):
            frame = value
            name = "time-series frame"
        else:
            frame = read_timeseries(str(value))
            name = f"time series {value}"
        arr = frame.to_numpy(dtype=np.float32, na_value=np.nan)
    if arr.shape[1] != n_variables:
        raise InputError(f"{name} has {arr.shape[1]} variables; this expert expects {n_variables}")
    if arr.shape[0] < 1:
        raise InputError(f"{name} has no time steps")
    arr = np.where(np.isfinite(arr), arr, np.nan).astype(np.float32)
    if np.isnan(arr).all():
        raise InputError(f"{name} has no observed values")
    return arr

