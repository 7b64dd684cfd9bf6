"""DINOv2-B experts: ``dinov2_base`` (images) and ``dinov2_ct25d`` (CT volumes, MedMIX Appendix A).

``dinov2_base``: ``facebook/dinov2-base`` (``Dinov2Model``) with its ``AutoImageProcessor``
(model card: resize the shorter side to 256 bicubic, centre-crop 224, ImageNet mean/std);
embedding = [CLS] token of the last hidden state (after the final layer norm; equal to
``pooler_output``), 768 dims, not normalised.

``dinov2_ct25d``: Appendix A verbatim via :func:`extractors.ct_slicing.volume_to_slices`:
N = 48 uniformly spaced axial slices (Eq. 5), HU clipped to [-1000, 1000] and scaled to [0, 1],
grey replicated to RGB, bicubic resize to 224x224; each slice normalised with DINOv2's mean/std
(from the processor config; no further resize or crop), encoded to its [CLS] token, and the 48
slice embeddings are mean-pooled -> 768 dims. Same model code and weights as ``dinov2_base``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.ct_slicing import HU_RANGE, N_SLICES, volume_to_slices
from extractors.hf_vision import HFViTExpert
from extractors.inputs import read_volume
from extractors.registry import ExpertSpec, register_expert
from extractors.slide_tiling import SlideExpert, slide_spec

HUB_ID = "facebook/dinov2-base"
#: Hub commit of facebook/dinov2-base (as pinned in MTEB's model registry and other projects).
REVISION = "f9e44c814b77203eaa57a6bdbbd535f21ede1415"
IMAGE_PREPROCESSING = {
    "processor": "AutoImageProcessor (preprocessor_config.json)",
    "resize_shortest_edge": 256,
    "interpolation": "bicubic",
    "center_crop": 224,
    "normalize": "imagenet",
    "pooling": "cls",
}


@register_expert(
    ExpertSpec(
        name="dinov2_base",
        params=86_600_000,
        cost_note="≈86.6M (ViT-B/14, facebook/dinov2-base model card); FLOPs not declared",
        kinds=("image",),
        role="general",
        dim=768,
        hub_id=HUB_ID,
        revision=REVISION,
        preprocessing=IMAGE_PREPROCESSING,
        paper_name="DINOv2-B",
        description="DINOv2 ViT-B/14 [CLS] embedding of the model-card preprocessed image.",
        gpu=True,
        mem_mb=3000,
        gpu_mem_mb=2000,
        batch_sizes={"cpu": 16, "cuda": 256},
    )
)
class DinoV2Base(HFViTExpert):
    pass


@register_expert(
    ExpertSpec(
        name="dinov2_ct25d",
        params=86_600_000,
        cost_note="≈86.6M (ViT-B/14, facebook/dinov2-base model card); FLOPs not declared (48 slices per volume)",
        kinds=("volume",),
        role="general",
        dim=768,
        hub_id=HUB_ID,
        revision=REVISION,
        preprocessing={
            "pipeline": "MedMIX Appendix A 2.5D",
            "n_slices": N_SLICES,
            "slice_sampling": "floor((D-1)/(N-1)*i)",
            "hu_range": list(HU_RANGE),
            "size": 224,
            "interpolation": "bicubic",
            "normalize": "dinov2 processor mean/std",
            "pooling": "cls per slice, mean over slices",
            "volume_layout": "DHW",
        },
        paper_name="DINOv2-B",
        description="Appendix A: 48 uniformly sampled axial slices, DINOv2-B [CLS] per slice, mean over slices.",
        gpu=True,
        mem_mb=4000,
        gpu_mem_mb=4000,
        batch_sizes={"cpu": 2, "cuda": 16},
    )
)
class DinoV2CT25D(DinoV2Base):
    def prepare(self, value: Any) -> np.ndarray:
        """``[N, 3, 224, 224]`` float32 slices in [0, 1] (normalisation happens at embedding)."""
        pre = self.settings.preprocessing
        volume = read_volume(value, layout=pre.get("volume_layout", "DHW"))
        return volume_to_slices(
            volume, n=int(pre["n_slices"]), size=int(pre["size"]), hu_range=tuple(pre["hu_range"])
        )

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        mean, std = self.normalisation()
        slices = np.stack(batch)  # [B, N, 3, H, W]
        pixels = ((slices - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
        emb = self.encode_pixels(pixels.reshape(-1, *pixels.shape[2:]))
        return emb.reshape(len(batch), slices.shape[1], self.dim).mean(axis=1)


@register_expert(slide_spec("dinov2_slide", DinoV2Base, "general", "DINOv2-B", 6000))
class DinoV2Slide(SlideExpert, DinoV2Base):
    pass
