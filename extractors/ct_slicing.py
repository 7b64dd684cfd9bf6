"""The 2.5D CT pipeline of MedMIX Appendix A, shared by every 2D expert that encodes CT volumes.

N uniformly spaced axial slices over the full depth (Eq. 5), HU clipped to [-1000, 1000] and
scaled to [0, 1], grey replicated to three channels, bicubic resize to 224x224.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import InputError
from extractors.inputs import read_volume

N_SLICES = 48
HU_RANGE = (-1000.0, 1000.0)


def sample_slice_indices(depth: int, n: int = N_SLICES) -> np.ndarray:
    """Eq. 5: ``floor((D - 1) / (N - 1) * i)`` for ``i = 0..N-1`` (repeats when ``D < N``)."""
    if depth < 1:
        raise InputError(f"volume has depth {depth}")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    # Integer arithmetic gives the exact floor; float ((D-1)/(N-1))*i can land just below an integer.
    return ((depth - 1) * np.arange(n, dtype=np.int64)) // (n - 1)


def window_hu(slices: np.ndarray, hu_range: tuple[float, float] = HU_RANGE) -> np.ndarray:
    lo, hi = hu_range
    out = (np.clip(np.nan_to_num(slices, nan=lo), lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32)


def volume_to_slices(
    volume: np.ndarray,
    n: int = N_SLICES,
    size: int = 224,
    hu_range: tuple[float, float] = HU_RANGE,
    min_depth: int = 1,
) -> np.ndarray:
    """``[D, H, W]`` HU volume -> ``[N, 3, size, size]`` float32 in [0, 1] (bicubic resize)."""
    import torch
    import torch.nn.functional as F

    if volume.ndim != 3:
        raise InputError(f"volume has shape {volume.shape}; expected [D, H, W]")
    if volume.shape[0] < min_depth:
        raise InputError(f"volume has {volume.shape[0]} slices; this expert needs at least {min_depth}")
    idx = sample_slice_indices(volume.shape[0], n)
    grey = torch.from_numpy(window_hu(volume[idx], hu_range))[:, None]
    resized = F.interpolate(grey, size=(size, size), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
    return resized.expand(-1, 3, -1, -1).contiguous().numpy()


def load_volume(value: Any, layout: str = "DHW") -> np.ndarray:
    """A ``[D, H, W]`` float32 HU volume from a path (see :func:`read_volume`) or an array."""
    if isinstance(value, np.ndarray):
        if value.ndim != 3:
            raise InputError(f"volume array has shape {value.shape}; expected 3 dimensions")
        if not np.isfinite(value).any():
            raise InputError("volume array has no finite voxels")
        return value.astype(np.float32, copy=False)
    return read_volume(str(value), layout)
