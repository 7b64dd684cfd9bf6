"""Greyscale loading and histograms shared by the weight-free image and CT experts (a helper, not an expert)."""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import InputError
from extractors.inputs import read_image

SIZE = 64


def load_grey(value: Any, size: int = SIZE) -> np.ndarray:
    """A ``[size, size]`` float32 greyscale image in [0, 1] from a path, PIL image or array.

    Arrays are taken as greyscale ``[H, W]`` (or ``[H, W, 3]`` RGB) in [0, 1] when float, in
    [0, 255] when integer.
    """
    from PIL import Image

    if isinstance(value, str) or hasattr(value, "__fspath__"):
        # Straight to greyscale; JPEGs may decode at a reduced scale (at least 2x the target).
        image = read_image(str(value), mode="L", draft_size=(2 * size, 2 * size))
    elif isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray):
        arr = value
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
        if arr.ndim != 2 or min(arr.shape) < 1:
            raise InputError(f"image array has shape {value.shape}; expected [H, W] or [H, W, 3]")
        arr = arr.astype(np.float32) / (255.0 if np.issubdtype(value.dtype, np.integer) else 1.0)
        if not np.isfinite(arr).all():
            raise InputError("image array has non-finite pixels")
        image = Image.fromarray(np.clip(arr, 0.0, 1.0).astype(np.float32), mode="F")
    else:
        raise InputError(f"cannot read an image from a {type(value).__name__}")
    if image.mode != "F":
        image = image.convert("L").convert("F")
        scale = 255.0
    else:
        scale = 1.0
    # reducing_gap: large images are first box-reduced by an integer factor (fast), then resampled.
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.clip(np.asarray(resized, dtype=np.float32) / scale, 0.0, 1.0)


def batch_histogram(values: np.ndarray, bins: int) -> np.ndarray:
    """Row-wise histogram of ``[B, ...]`` values in [0, 1] into ``bins`` equal bins (fractions)."""
    flat = values.reshape(values.shape[0], -1)
    idx = np.minimum((flat * bins).astype(np.int64), bins - 1).clip(0)
    idx += np.arange(flat.shape[0])[:, None] * bins
    counts = np.bincount(idx.ravel(), minlength=flat.shape[0] * bins).reshape(flat.shape[0], bins)
    return (counts / flat.shape[1]).astype(np.float32)

