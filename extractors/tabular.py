"""``tabular_raw``: the tabular feature vector as is, plus a missing-value indicator per feature.

Input: a list (or the cohort's JSON list) of exactly ``preprocessing["n_features"]`` numbers,
``null``/NaN = unobserved. Output: the values with NaN -> 0, followed by one indicator per
feature (1 = missing) -> ``2 * n_features`` dims. Because the width depends on the dataset, the
workflow sets ``n_features`` and this expert's ``dim`` follows it (the registered spec's dim is
that of the default, 16 features). Values are not rescaled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor, InputError
from extractors.inputs import read_tabular
from extractors.registry import ExpertSpec, register_expert

DEFAULT_N_FEATURES = 16


@register_expert(
    ExpertSpec(
        name="tabular_raw",
        kinds=("tabular",),
        role="general",
        dim=2 * DEFAULT_N_FEATURES,
        preprocessing={"n_features": DEFAULT_N_FEATURES, "missing": "0 + indicator"},
        offline=True,
        description="Weight-free: the raw numeric vector (NaN -> 0) plus per-feature missing indicators.",
        mem_mb=300,
    )
)
class TabularRaw(Extractor):
    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        n = self.settings.preprocessing.get("n_features")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"tabular_raw: preprocessing.n_features must be a positive integer, got {n!r}")
        self.n_features = n

    @property
    def dim(self) -> int:
        return 2 * self.n_features

    def prepare(self, value: Any) -> np.ndarray:
        arr = read_tabular(value)
        if arr.size != self.n_features:
            raise InputError(f"tabular input has {arr.size} features; this expert expects {self.n_features}")
        missing = ~np.isfinite(arr)
        return np.concatenate([np.where(missing, 0.0, arr), missing]).astype(np.float32)

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack(batch).astype(np.float32)
