"""``ct_intensity_profile``: a weight-free depth-resolved intensity expert for CT volumes.

Appendix A slicing (:func:`~extractors.ct_slicing.sample_slice_indices`, N = 48 uniformly spaced
axial slices over the full depth, Eq. 5), HU clipped to [-1000, 1000] and scaled to [0, 1]. The
48 sampled slices form 8 consecutive depth bands of 6 slices (inferior to superior); each band
gives a 16-bin histogram of its voxels (fractions) -> 8 x 16 = 128 dims. It sees a bright lesion
and the depth it sits at. The features are computed in ``prepare`` (no model), so a batch only
stacks them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor, InputError
from extractors.ct_slicing import HU_RANGE, N_SLICES, load_volume, sample_slice_indices, window_hu
from extractors.image_grey import batch_histogram
from extractors.registry import ExpertSpec, register_expert

N_BANDS = 8
N_BINS = 16


def depth_profile(volume: np.ndarray, n: int, bands: int, bins: int, min_depth: int) -> np.ndarray:
    """``[D, H, W]`` HU -> ``[bands * bins]`` band histograms of the Appendix A slices."""
    if volume.shape[0] < min_depth:
        raise InputError(f"volume has {volume.shape[0]} slices; this expert needs at least {min_depth}")
    if n % bands:
        raise ValueError(f"n_slices {n} must be a multiple of depth_bands {bands}")
    slices = window_hu(volume[sample_slice_indices(volume.shape[0], n)], HU_RANGE)
    per_band = slices.reshape(bands, -1)
    return batch_histogram(per_band, bins).reshape(-1)


@register_expert(
    ExpertSpec(
        name="ct_intensity_profile",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("volume",),
        role="general",
        dim=N_BANDS * N_BINS,
        preprocessing={
            "n_slices": N_SLICES,
            "hu_range": list(HU_RANGE),
            "depth_bands": N_BANDS,
            "bins": N_BINS,
            "layout": "DHW",
            "min_depth": 1,
        },
        offline=True,
        description="Weight-free: 16-bin HU histograms of 8 depth bands of the Appendix A slices.",
        mem_mb=3000,
    )
)
class CTIntensityProfile(Extractor):
    @property
    def dim(self) -> int:
        p = self.settings.preprocessing
        return int(p["depth_bands"]) * int(p["bins"])

    def prepare(self, value: Any) -> np.ndarray:
        p = self.settings.preprocessing
        volume = load_volume(value, p["layout"])
        return depth_profile(volume, int(p["n_slices"]), int(p["depth_bands"]), int(p["bins"]), int(p["min_depth"]))

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack(batch).astype(np.float32)
