"""Reading multivariate series for the series experts (a helper, not an expert).

A series expert sizes itself from its dataset: the variable list the cohort step declared or
inferred (``settings.input_schema["variables"]``, recorded in the input view). A series whose
variable set differs from that list is unusable (an :class:`InputError` naming what it lacks and
what it adds, so the sample is recorded absent); the same set in another column order is
reordered. Without a recorded list (direct use on arrays, an older input view) the expert expects
``preprocessing["n_variables"]`` columns, by default :data:`N_VARIABLES` (MIMIC-IV-MM's 46).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import ExtractorSettings, InputError
from extractors.inputs import read_timeseries

N_VARIABLES = 46
#: Variable names listed in a "different variable set" reason.
N_NAMED = 5


def expected_variables(settings: ExtractorSettings) -> list[str] | None:
    """The dataset's variable names recorded for this modality, or ``None``."""
    variables = settings.input_schema.get("variables")
    return [str(v) for v in variables] if variables else None


def n_expected(settings: ExtractorSettings) -> int:
    """How many variables the expert reads: the dataset's list, else ``preprocessing.n_variables``."""
    variables = expected_variables(settings)
    return len(variables) if variables else int(settings.preprocessing["n_variables"])


def load_series(value: Any, n_variables: int, variables: list[str] | None = None) -> np.ndarray:
    """A ``[T, V]`` float32 array (NaN = unobserved) from a path, DataFrame or array.

    Named inputs (files, frames) are checked against ``variables`` and put in its order; arrays
    and inputs without a list only need ``n_variables`` columns. Rows of a file are in time order
    (:func:`~extractors.inputs.read_timeseries`).
    """
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
        if variables:
            frame = _in_dataset_order(frame, variables, name)
        arr = frame.to_numpy(dtype=np.float32, na_value=np.nan)
    expected = len(variables) if variables else n_variables
    if arr.shape[1] != expected:
        raise InputError(f"{name} has {arr.shape[1]} variables; this expert expects {expected}")
    if arr.shape[0] < 1:
        raise InputError(f"{name} has no time steps")
    arr = np.where(np.isfinite(arr), arr, np.nan).astype(np.float32)
    if np.isnan(arr).all():
        raise InputError(f"{name} has no observed values")
    return arr


def _in_dataset_order(frame, variables: list[str], name: str):
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        raise InputError(f"{name} has duplicate variable columns")
    lacks = [v for v in variables if v not in set(columns)]
    extra = [c for c in columns if c not in set(variables)]
    if lacks or extra:
        raise InputError(
            f"{name} has a different variable set than its dataset ({len(columns)} variables, the dataset's "
            f"list has {len(variables)}): lacks {_named(lacks)}, has extra {_named(extra)}"
        )
    frame = frame.copy()
    frame.columns = columns
    return frame[variables]


def _named(names: list[str]) -> str:
    more = f" and {len(names) - N_NAMED} more" if len(names) > N_NAMED else ""
    return (str(names[:N_NAMED]) + more) if names else "none"
