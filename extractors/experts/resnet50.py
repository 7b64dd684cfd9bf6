"""``resnet50``: timm ResNet-50 image expert (the CP-IMoE backbone family, supplementary Table S3).

``timm/resnet50.a1_in1k`` (ResNet Strikes Back A1 recipe, ImageNet-1k) read from the hub
snapshot at ``revision`` or from ``local_dir`` (the repository layout: ``config.json`` with
``architecture`` and ``pretrained_cfg``, ``model.safetensors``). The network is built by
``timm.create_model(architecture, num_classes=0)`` and every tensor except the classifier must be
in the checkpoint (strict load). Preprocessing is the model card's:
``timm.data.resolve_data_config(pretrained_cfg)`` + ``create_transform(is_training=False)``
(a1_in1k: resize to 224 / crop_pct 0.95 = 236 bicubic, centre-crop 224, ImageNet mean/std).
Embedding = the globally average-pooled 2048-d features (``pre_logits``), not normalised.

The frozen backbone only: CP-IMoE's fine-tuned-ResNet50 rows need end-to-end training, which is
outside the two-stage design on cached embeddings.

``REVISION`` is the commit ``767268603ca0cb0bfe326fa87277f19c419566ef`` of ``timm/resnet50.a1_in1k``:
a Hugging Face cache snapshot folder of that name holding ``model.safetensors`` appears in public
code (``.../models--timm--resnet50.a1_in1k/snapshots/767268603ca0.../model.safetensors``); it
could not be checked against the hub from here (no hub access). ``medmix fetch`` verifies the
snapshot it downloads (``config.json`` and ``model.safetensors`` present, header parsed); override
with ``experts.settings.resnet50.revision`` (``main`` resolves through ``medmix.lock.json``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from extractors.hf_common import LOAD_ERRORS, raise_unless_missing, refuse_missing_tensors
from extractors.hf_vision import ImageExpert
from extractors.registry import ExpertSpec, register_expert

HUB_ID = "timm/resnet50.a1_in1k"
#: Hub commit seen as a cached snapshot (with model.safetensors) in public code; see the module docstring.
REVISION = "767268603ca0cb0bfe326fa87277f19c419566ef"


@register_expert(
    ExpertSpec(
        name="resnet50",
        params=25_600_000,
        flops_per_sample=2 * 4.1e9,
        cost_note="≈25.6M params, 4.1 GMACs at 224 px (timm resnet50.a1_in1k model card); FLOPs = 2 × MACs",
        kinds=("image",),
        role="general",
        dim=2048,
        hub_id=HUB_ID,
        revision=REVISION,
        preprocessing={
            "transform": "timm resolve_data_config(pretrained_cfg) + create_transform (inference)",
            "size": 224,
            "crop_pct": 0.95,
            "interpolation": "bicubic",
            "normalize": "imagenet",
            "pooling": "global average (pre_logits)",
        },
        paper_name="ResNet50",
        description="timm ResNet-50 (a1_in1k) global-average-pooled features; CP-IMoE's backbone family.",
        gpu=True,
        mem_mb=2000,
    )
)
class ResNet50(ImageExpert):
    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._model = None
        self._transform = None
        self._config: dict[str, Any] | None = None

    def repo_config(self) -> dict[str, Any]:
        """``config.json`` of the model folder (``architecture``, ``pretrained_cfg``)."""
        if self._config is None:
            folder = self.snapshot_dir()
            path = os.path.join(folder, "config.json")
            try:
                with open(path) as fh:
                    config = json.load(fh)
            except (OSError, ValueError) as err:
                raise self.unavailable(err) from err
            if "architecture" not in config or "pretrained_cfg" not in config:
                raise self.unavailable(ValueError(f"{path}: not a timm config (needs architecture and pretrained_cfg)"))
            self._config = {**config, "folder": folder}
        return self._config

    @property
    def transform(self):
        if self._transform is None:
            from timm.data import create_transform, resolve_data_config

            data_config = resolve_data_config({}, pretrained_cfg=self.repo_config()["pretrained_cfg"])
            self._transform = create_transform(**data_config, is_training=False)
        return self._transform

    def load(self) -> None:
        if self._model is not None:
            return
        config = self.repo_config()
        try:
            import timm
            from safetensors.torch import load_file

            model = timm.create_model(config["architecture"], pretrained=False, num_classes=0)
            state = load_file(os.path.join(config["folder"], "model.safetensors"))
        except LOAD_ERRORS as err:
            raise_unless_missing(err)
            raise self.unavailable(err) from err
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.fc."))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        refuse_missing_tensors(f"expert {self.spec.name!r} ({self.settings.model_id})", config["folder"], missing,
                               tolerated=())
        if unexpected:
            raise self.unavailable(ValueError(f"checkpoint has tensors the model lacks: {sorted(unexpected)[:3]}"))
        if model.num_features != self.dim:
            raise ValueError(f"expert {self.spec.name!r}: model features {model.num_features} != "
                             f"declared dim {self.dim}")
        self.pick_device()
        self._model = model.to(self.device).eval()
        _ = self.transform

    def preprocess_image(self, image) -> np.ndarray:
        return self.transform(image.convert("RGB")).numpy().astype(np.float32, copy=False)

    def forward_pixels(self, pixels):
        return self._model(pixels)
