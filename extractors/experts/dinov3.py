"""``dinov3_vitl``: DINOv3 ViT-L/16 image teacher (MedMIX Table E1, "DINOv3 ViT-L").

``facebook/dinov3-vitl16-pretrain-lvd1689m`` loaded with transformers' native DINOv3 classes
(``DINOv3ViTModel``, transformers >= 4.56; no remote code) and its ``AutoImageProcessor``
(model card: resize to 224x224 bilinear, ImageNet mean/std). Embedding = [CLS] token of the
last hidden state after the final layer norm (= ``pooler_output``), 1024 dims, not normalised.
The checkpoint is gated on the hub: accept its licence and log in before pre-downloading.
"""

from __future__ import annotations

from extractors.hf_vision import HFViTExpert
from extractors.registry import ExpertSpec, register_expert
from extractors.slide_tiling import SlideExpert, slide_spec

HUB_ID = "facebook/dinov3-vitl16-pretrain-lvd1689m"
#: Hub commit seen as the cached snapshot of this repository in several public projects.
REVISION = "ea8dc2863c51be0a264bab82070e3e8836b02d51"


@register_expert(
    ExpertSpec(
        name="dinov3_vitl",
        params=300_000_000,
        cost_note="teacher (training only): ≈300M (facebook/dinov3-vitl16 model card, ViT-L/16 distilled)",
        kinds=("image",),
        role="teacher",
        dim=1024,
        hub_id=HUB_ID,
        revision=REVISION,
        preprocessing={
            "processor": "AutoImageProcessor (preprocessor_config.json)",
            "resize": [224, 224],
            "interpolation": "bilinear",
            "normalize": "imagenet",
            "pooling": "cls",
        },
        paper_name="DINOv3 ViT-L",
        description="DINOv3 ViT-L/16 [CLS] embedding (teacher, training only).",
        gpu=True,
        mem_mb=6000,
        gpu_mem_mb=4000,
        batch_sizes={"cpu": 8, "cuda": 128},
    )
)
class DinoV3ViTL(HFViTExpert):
    gated = True
    availability_note = (
        "facebook/dinov3-vitl16-pretrain-lvd1689m is a gated model: accept its licence on "
        "https://huggingface.co/facebook/dinov3-vitl16-pretrain-lvd1689m and set HF_TOKEN (or `hf auth login`) "
        "before `medmix fetch`; it needs transformers >= 4.56 (DINOv3ViTModel)."
    )


@register_expert(slide_spec("dinov3_slide", DinoV3ViTL, "teacher", "DINOv3 ViT-L", 8000))
class DinoV3Slide(SlideExpert, DinoV3ViTL):
    pass
