"""``biomedclip``: BiomedCLIP image tower (MedMIX Table E1, biomedical image expert).

``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` loaded with open_clip from the pinned
hub snapshot (``local-dir:`` schema, so the revision is honoured; open_clip's ``hf-hub:`` loader
ignores revisions). Preprocessing is the model's own open_clip inference transform
(``open_clip_config.json``: resize the shorter side to 224 bicubic, centre-crop 224, OpenAI CLIP
mean/std). Embedding = ``model.encode_image`` (the 512-d projected image embedding, not
L2-normalised). open_clip builds the text tower from the config of
``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``, so that config must be in the Hugging
Face cache too (weights come from the BiomedCLIP checkpoint).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from extractors.hf_common import LOAD_ERRORS, raise_unless_missing
from extractors.hf_vision import ImageExpert
from extractors.registry import ExpertSpec, register_expert
from extractors.slide_tiling import SlideExpert, slide_spec

HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
#: Hub commit of the BiomedCLIP repository (widely pinned; see its hub commit history).
REVISION = "9f341de24bfb00180f1b847274256e9b65a3a32e"
CONFIG_FILE = "open_clip_config.json"


@register_expert(
    ExpertSpec(
        name="biomedclip",
        cost_note="not declared (the model card states no count for the ViT-B/16 image tower)",
        kinds=("image",),
        role="biomed",
        dim=512,
        hub_id=HUB_ID,
        revision=REVISION,
        preprocessing={
            "transform": "open_clip image_transform_v2 from open_clip_config.json (inference)",
            "resize_mode": "shortest",
            "size": 224,
            "interpolation": "bicubic",
            "normalize": "openai clip mean/std",
            "embedding": "encode_image (projected, not normalised)",
        },
        paper_name="BiomedCLIP",
        description="BiomedCLIP ViT-B/16 image embedding (open_clip encode_image).",
        gpu=True,
        mem_mb=3000,
        gpu_mem_mb=2000,
        batch_sizes={"cpu": 16, "cuda": 256},
    )
)
class BiomedCLIP(ImageExpert):
    availability_note = (
        "open_clip also needs the config of microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract "
        "(the text tower's architecture) in the Hugging Face cache."
    )

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._transform = None
        self._model = None
        self._folder: str | None = None

    def folder(self) -> str:
        """The model folder (``local_dir`` or the pinned hub snapshot) holding ``open_clip_config.json``."""
        if self._folder is None:
            folder = self.snapshot_dir()
            if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
                raise self.unavailable(FileNotFoundError(f"{CONFIG_FILE} not found in {folder}"))
            self._folder = folder
        return self._folder

    @property
    def transform(self):
        """open_clip's inference transform, built from the model folder's config (no weights needed)."""
        if self._transform is None:
            folder = self.folder()  # sets HF_HUB_OFFLINE before open_clip imports the hub client
            from dataclasses import asdict

            from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

            with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as fh:
                config = json.load(fh)
            cfg = merge_preprocess_dict(asdict(PreprocessCfg()), config.get("preprocess_cfg", {}))
            cfg["size"] = config["model_cfg"]["vision_cfg"].get("image_size", cfg["size"])
            self._transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        return self._transform

    def load(self) -> None:
        if self._model is not None:
            return
        self.offline()
        import open_clip

        with open(os.path.join(self.folder(), CONFIG_FILE), encoding="utf-8") as fh:
            embed_dim = json.load(fh)["model_cfg"].get("embed_dim")
        if embed_dim != self.dim:
            raise ValueError(f"expert {self.spec.name!r}: model embed_dim {embed_dim} != declared dim {self.dim}")
        self.pick_device()
        try:
            model = open_clip.create_model_from_pretrained(
                f"local-dir:{self.folder()}", device=self.device, return_transform=False, weights_only=True
            )
        except LOAD_ERRORS as err:
            raise_unless_missing(err)
            raise self.unavailable(err) from err
        self._model = model.eval()
        _ = self.transform

    def preprocess_image(self, image) -> np.ndarray:
        return self.transform(image).numpy().astype(np.float32, copy=False)

    def forward_pixels(self, pixels):
        return self._model.encode_image(pixels)


@register_expert(slide_spec("biomedclip_slide", BiomedCLIP, "biomed", "BiomedCLIP", 6000))
class BiomedCLIPSlide(SlideExpert, BiomedCLIP):
    pass
