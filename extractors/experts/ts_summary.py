"""``ts_summary``: a weight-free summary-statistics expert for multivariate time series.

Input: a CSV/Parquet series (rows = time steps) with the variables its dataset records (the
input view's variable list, :mod:`extractors.series`; without one, ``preprocessing["n_variables"]``
columns, default 46). Per variable: last observed value, mean, min, max, std (population) and the
observed fraction, in that order, variable-major -> ``6 * V`` dims (276 for MIMIC's 46 variables).
Statistics of a never-observed variable are 0; its observed fraction (0) tells the model so.
Values are in the variables' raw units.

Irregular sampling: rows are put in time order by the time column (``time``/``hour``/
``charttime``, :func:`~extractors.inputs.read_timeseries`), else the file's row order is taken as
time order. Mean, min, max, std and the observed fraction ignore the order and the spacing; only
"last" uses the order (the latest observed value). Time gaps are not weighted. The feature file
records the variable names (``variables`` in its metadata).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.registry import ExpertSpec, register_expert
from extractors.series import N_VARIABLES, expected_variables, load_series, n_expected

STATS = ("last", "mean", "min", "max", "std", "observed_fraction")


def pad_series(batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``[T_i, V]`` series into ``[B, T_max, V]`` (NaN-padded) and their lengths."""
    lengths = np.array([s.shape[0] for s in batch])
    out = np.full((len(batch), int(lengths.max()), batch[0].shape[1]), np.nan, np.float32)
    for k, s in enumerate(batch):
        out[k, : s.shape[0]] = s
    return out, lengths


def summary_features(batch: list[np.ndarray]) -> np.ndarray:
    """``[B, 6 * V]`` summary statistics (see the module docstring)."""
    x, lengths = pad_series(batch)
    x = x.astype(np.float64)
    b, t, v = x.shape
    observed = ~np.isnan(x)
    count = observed.sum(1)
    seen = count > 0
    safe = np.maximum(count, 1)
    filled = np.where(observed, x, 0.0)
    mean = filled.sum(1) / safe
    var = (np.where(observed, (x - mean[:, None]) ** 2, 0.0)).sum(1) / safe
    mins = np.where(observed, x, np.inf).min(1)
    maxs = np.where(observed, x, -np.inf).max(1)
    last_idx = t - 1 - np.argmax(observed[:, ::-1], axis=1)
    last = np.take_along_axis(filled, last_idx[:, None, :], axis=1)[:, 0]
    frac = count / lengths[:, None]
    stats = np.stack([last, mean, mins, maxs, np.sqrt(var), frac], axis=2)
    stats[:, :, :5] = np.where(seen[:, :, None], stats[:, :, :5], 0.0)
    return stats.reshape(b, v * len(STATS)).astype(np.float32)


@register_expert(
    ExpertSpec(
        name="ts_summary",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("timeseries",),
        role="general",
        dim=len(STATS) * N_VARIABLES,
        preprocessing={"n_variables": N_VARIABLES, "stats": list(STATS)},
        offline=True,
        description="Weight-free per-variable last/mean/min/max/std/observed-fraction of a multivariate series.",
        mem_mb=500,
    )
)
class TimeSeriesSummary(Extractor):
    @property
    def dim(self) -> int:
        return len(STATS) * n_expected(self.settings)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "variables": expected_variables(self.settings)}

    def prepare(self, value: Any) -> np.ndarray:
        return load_series(value, n_expected(self.settings), expected_variables(self.settings))

    def sort_key(self, prepared: np.ndarray) -> int:
        return int(prepared.shape[0])

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return summary_features(batch)
