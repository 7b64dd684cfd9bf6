"""``ct_texture25d``: the Appendix A 2.5D pipeline with the ``image_texture`` features per slice.

N = 48 uniformly spaced axial slices (Eq. 5), HU clipped to [-1000, 1000] and scaled to [0, 1],
bicubic resize (to 64x64 here instead of 224x224, to stay fast: ``preprocessing["size"]``),
:func:`extractors.texture_features.texture_features` on each slice (grey channel), mean over the
slices -> 74 dims. ``preprocessing["min_depth"]`` (default 1) is the minimum number of slices a
volume needs; shallower volumes are recorded as absent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.ct_slicing import HU_RANGE, N_SLICES, load_volume, volume_to_slices
from extractors.registry import ExpertSpec, register_expert
from extractors.texture_features import TEXTURE_DIM, texture_features


@register_expert(
    ExpertSpec(
        name="ct_texture25d",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("volume",),
        role="biomed",
        dim=TEXTURE_DIM,
        preprocessing={
            "n_slices": N_SLICES,
            "hu_range": list(HU_RANGE),
            "size": 64,
            "resize": "bicubic",
            "layout": "DHW",
            "min_depth": 1,
            "pool": "mean",
        },
        offline=True,
        description="Weight-free 2.5D CT texture: image_texture features of 48 Appendix A slices, mean-pooled.",
        mem_mb=3000,
    )
)
class CTTexture25D(Extractor):
    def prepare(self, value: Any) -> np.ndarray:
        p = self.settings.preprocessing
        volume = load_volume(value, p["layout"])
        slices = volume_to_slices(
            volume, int(p["n_slices"]), int(p["size"]), tuple(p["hu_range"]), int(p["min_depth"])
        )
        return np.ascontiguousarray(slices[:, 0])  # grey channel: [N, size, size]

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        n = batch[0].shape[0]
        feats = texture_features(np.concatenate(batch, axis=0))
        return feats.reshape(len(batch), n, -1).mean(1).astype(np.float32)
