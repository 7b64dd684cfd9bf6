"""``image_texture``: a weight-free, radiomics-style texture expert for 2D images and slides.

Input: the same 64x64 greyscale image in [0, 1] as ``image_intensity_grid``. Features (74):

- grey-level co-occurrence (GLCM, symmetric, normalised) at distances 1 and 2 in the four
  directions 0/45/90/135 degrees: contrast, homogeneity, energy (sqrt of the angular second
  moment) and correlation -> 8 offsets x 4 = 32. To make the texture view insensitive to smooth
  brightness changes, the co-occurrences are counted on the *detrended* image (the image minus
  its 9x9 local mean), quantised into 16 levels of width 1/32 centred on zero (values beyond
  +-0.25 fall in the end levels); contrast is divided by 15**2 so every feature lies in [-1, 1];
- per cell of a 4x4 grid: high-pass energy, reported as the RMS of the image minus its 3x3 box
  blur (the square root of the mean of squares, so it is in intensity units) -> 16;
- per cell of the 4x4 grid: mean gradient magnitude (central differences) -> 16;
- a 10-bin uniform LBP(8, 1) histogram (the 8 square neighbours at distance 1, neighbour >=
  centre; uniform codes 0..8 by their number of set bits, every non-uniform code in bin 9) -> 10.

Everything is vectorised over the batch (numpy), so thousands of 64x64 images take seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.image_grey import SIZE, load_grey
from extractors.registry import ExpertSpec, register_expert
from extractors.texture_features import (
    CELL_GRID,
    DETREND_SIZE,
    GLCM_LEVELS,
    GLCM_OFFSETS,
    GLCM_STEP,
    TEXTURE_DIM,
    texture_features,
)

#: (dy, dx) offsets: distances 1 and 2 at 0, 45, 90 and 135 degrees.


@register_expert(
    ExpertSpec(
        name="image_texture",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("image", "slide"),
        role="biomed",
        dim=TEXTURE_DIM,
        preprocessing={
            "size": SIZE,
            "resize": "bilinear, reducing_gap 3, JPEG draft >= 2x",
            "glcm_levels": GLCM_LEVELS,
            "glcm_step": GLCM_STEP,
            "glcm_offsets": [list(o) for o in GLCM_OFFSETS],
            "detrend_size": DETREND_SIZE,
            "cell_grid": CELL_GRID,
            "lbp": "uniform(8,1) square",
        },
        offline=True,
        description="Weight-free radiomics-style texture: detrended GLCM, high-pass energy, gradients, uniform LBP.",
        mem_mb=500,
    )
)
class ImageTexture(Extractor):
    def prepare(self, value: Any) -> np.ndarray:
        return load_grey(value, int(self.settings.preprocessing["size"]))

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return texture_features(np.stack(batch))
