"""``image_intensity_grid``: a weight-free intensity-layout expert for 2D images and slides.

Greyscale (ITU-R 601 luma), bilinear resize to 64x64 (images over 3x larger are first box-reduced
by an integer factor; JPEGs decode at a reduced DCT scale of at least 128 px), values in [0, 1]; features are the means
(64) and standard deviations (64) of an 8x8 grid of cells plus a 32-bin global histogram (32,
fractions of pixels) -> 160 dims. It sees *where* an image is bright (blobs, opacities), not fine
texture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.image_grey import SIZE, batch_histogram, load_grey
from extractors.registry import ExpertSpec, register_expert


def intensity_grid_features(images: np.ndarray, grid: int = 8, bins: int = 32) -> np.ndarray:
    """``[B, H, W]`` in [0, 1] -> ``[B, 2 * grid**2 + bins]`` (cell means, cell stds, histogram)."""
    b, h, w = images.shape
    cells = images.reshape(b, grid, h // grid, grid, w // grid).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(b, grid * grid, -1).astype(np.float64)
    means = cells.mean(-1)
    stds = cells.std(-1)
    hist = batch_histogram(images, bins)
    return np.concatenate([means, stds, hist], axis=1).astype(np.float32)


@register_expert(
    ExpertSpec(
        name="image_intensity_grid",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("image", "slide"),
        role="general",
        dim=160,
        preprocessing={"size": SIZE, "grid": 8, "bins": 32, "grey": "ITU-R 601 luma",
                       "resize": "bilinear, reducing_gap 3, JPEG draft >= 2x"},
        offline=True,
        description="Weight-free: 8x8 grid of cell means and stds plus a 32-bin histogram of a 64x64 greyscale image.",
        mem_mb=500,
    )
)
class ImageIntensityGrid(Extractor):
    @property
    def dim(self) -> int:
        p = self.settings.preprocessing
        return 2 * int(p["grid"]) ** 2 + int(p["bins"])

    def prepare(self, value: Any) -> np.ndarray:
        return load_grey(value, int(self.settings.preprocessing["size"]))

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        p = self.settings.preprocessing
        return intensity_grid_features(np.stack(batch), int(p["grid"]), int(p["bins"]))
