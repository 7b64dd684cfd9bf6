"""``ts_minirocket``: a weight-free MiniRocket-style shape/frequency expert for multivariate series.

Following MiniRocket (Dempster et al., KDD 2021): length-9 kernels whose weights are -1 except
for three positions equal to 2 (so every kernel sums to zero); a fixed, seeded subset of 32 of
the 84 such kernels; dilations 1, 2, 4 and 8 with zero ("same") padding; proportion-of-positive-
values (PPV) features.

Choices made here (documented because they differ from the reference implementation):

- each variable is z-normalised with its own observed mean and std (std 0 -> only centred),
  then missing values are forward-filled and leading gaps filled with 0 (the variable's mean);
  a never-observed variable is all 0;
- biases are fixed, not fit on training data: PPV = fraction of time steps where the kernel
  response exceeds ``b`` for ``b`` in (0.5, 2.0). (Quantile biases fit on each sample itself
  would make every PPV a constant, and fitting on a training split would need a fit step.)
  With zero-sum kernels the response to a sinusoid scales with the kernel's frequency response,
  so a nonzero bias makes PPV frequency-dependent;
- pooling over variables: the mean PPV over all variables (256 features) and the mean PPV over
  a fixed subset of variables, every fourth one (indices 0, 4, 8, ...; 256 features) -> 512.

Input: the dataset's variables as for ``ts_summary`` (:mod:`extractors.series`; any number V,
the output stays 512-d since features are pooled over variables). Irregular sampling: rows in
time order (time column, else file order), one row = one step; the spacing between rows is not
used (kernels see the sequence of observations). The feature file records the variable names.

Features are per sample: zero padding a batch to its longest series changes nothing, because a
series alone is zero-padded too and PPV only counts its own time steps.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.registry import ExpertSpec, register_expert
from extractors.series import N_VARIABLES, expected_variables, load_series, n_expected

KERNEL_LENGTH = 9
N_KERNELS = 32
KERNEL_SEED = 0
DILATIONS = (1, 2, 4, 8)
BIASES = (0.5, 2.0)
SUBSET_STEP = 4


def kernel_positions(n_kernels: int = N_KERNELS, seed: int = KERNEL_SEED) -> list[tuple[int, int, int]]:
    """The positions of the three weight-2 taps of each kernel (a seeded subset of the 84)."""
    combos = list(itertools.combinations(range(KERNEL_LENGTH), 3))
    chosen = np.sort(np.random.default_rng(seed).choice(len(combos), size=n_kernels, replace=False))
    return [combos[i] for i in chosen]


def normalise_series(series: np.ndarray) -> np.ndarray:
    """Per-variable z-normalisation on observed values, forward fill, then 0 -> ``[T, V]``."""
    x = series.astype(np.float64)
    observed = ~np.isnan(x)
    count = np.maximum(observed.sum(0), 1)
    mean = np.where(observed, x, 0.0).sum(0) / count
    std = np.sqrt(np.where(observed, (x - mean) ** 2, 0.0).sum(0) / count)
    z = (x - mean) / np.where(std > 1e-8, std, 1.0)
    # Forward fill: index of the last observed step at or before t (or -1).
    t = np.arange(x.shape[0])[:, None]
    last = np.maximum.accumulate(np.where(observed, t, -1), axis=0)
    filled = np.take_along_axis(np.where(observed, z, 0.0), np.maximum(last, 0), axis=0)
    return np.where(last >= 0, filled, 0.0).astype(np.float32)


def minirocket_features(batch: list[np.ndarray], positions: list[tuple[int, int, int]]) -> np.ndarray:
    """``[T_i, V]`` normalised series -> ``[B, 2 * K * len(DILATIONS) * len(BIASES)]`` PPVs."""
    lengths = np.array([s.shape[0] for s in batch])
    b, v, t = len(batch), batch[0].shape[1], int(lengths.max())
    x = np.zeros((b, v, t), np.float32)
    for k, s in enumerate(batch):
        x[k, :, : s.shape[0]] = s.T
    valid = (np.arange(t)[None, :] < lengths[:, None])[:, None, :]  # [B, 1, T]
    subset = np.arange(0, v, SUBSET_STEP)
    half = KERNEL_LENGTH // 2
    all_feats, sub_feats = [], []
    for d in DILATIONS:
        padded = np.pad(x, ((0, 0), (0, 0), (half * d, half * d)))
        taps = [padded[:, :, j * d : j * d + t] for j in range(KERNEL_LENGTH)]
        total = np.sum(taps, axis=0)
        for p, q, r in positions:
            response = 3.0 * (taps[p] + taps[q] + taps[r]) - total
            for bias in BIASES:
                ppv = ((response > bias) & valid).sum(2) / lengths[:, None]  # [B, V]
                all_feats.append(ppv.mean(1))
                sub_feats.append(ppv[:, subset].mean(1))
    return np.stack(all_feats + sub_feats, axis=1).astype(np.float32)


@register_expert(
    ExpertSpec(
        name="ts_minirocket",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: fixed (not learned) kernels and biases, no learned parameters; FLOPs not counted",
        kinds=("timeseries",),
        role="biomed",
        dim=2 * N_KERNELS * len(DILATIONS) * len(BIASES),
        preprocessing={
            "n_variables": N_VARIABLES,
            "n_kernels": N_KERNELS,
            "kernel_seed": KERNEL_SEED,
            "dilations": list(DILATIONS),
            "biases": list(BIASES),
            "subset_step": SUBSET_STEP,
            "normalise": "per-variable z-score, forward fill, 0",
        },
        offline=True,
        description="Weight-free MiniRocket-style PPV features (fixed kernels, dilations, biases), variable-pooled.",
        mem_mb=1000,
    )
)
class TimeSeriesMiniRocket(Extractor):
    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self.positions = kernel_positions()

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "variables": expected_variables(self.settings)}

    def prepare(self, value: Any) -> np.ndarray:
        return normalise_series(load_series(value, n_expected(self.settings), expected_variables(self.settings)))

    def sort_key(self, prepared: np.ndarray) -> int:
        return int(prepared.shape[0])

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return minirocket_features(batch, self.positions)
