"""``radfm``: RadFM 3D vision encoder (MedMIX Table E1, CT teacher; native 3D, training only).

RadFM (chaoyi-wu/RadFM) is not a pip package: its checkpoint is a zip on the hub
(``chaoyi-wu/RadFM``) that must be decompressed to ``pytorch_model.bin`` (README, step S2) and its
model code lives in the GitHub repository. So this expert needs

* ``local_dir``: the folder holding the decompressed ``pytorch_model.bin``;
* ``options.code_dir``: the repository's ``Quick_demo/Model/RadFM`` folder (a checkout pinned to a
  commit of github.com/chaoyi-wu/RadFM). Importing it runs third-party code, hence
  ``trust_remote_code`` and ``allow_remote_code: true`` are required.

Only RadFM's visual path is built, with the hyper-parameters of its ``MyEmbedding``: the 3D ViT
(``vit_3d.ViT``: 512 x 512 x 512 volume, 32 x 32 x 4 patches, dim 768, depth 12, 8 heads, MLP 2048)
and the perceiver resampler (``helpers.PerceiverResampler``, 32 latents); their weights are the
``embedding_layer.vision_encoder.*`` / ``embedding_layer.perceiver.*`` tensors of the checkpoint
(``torch.load(weights_only=True, mmap=True)``, ``strict=True``); the 13B language model is never
loaded. Embedding = mean of the 32 perceiver latents (768 dims), the visual tokens RadFM feeds its
language model before the final projection.

Preprocessing (RadFM's 3D input convention, ``stack_images`` in its dataset code): HU clipped to
[-1000, 1000] and scaled to [0, 1] (the Appendix A window; RadFM's own scans were pre-normalised
images), grey replicated to 3 channels, laid out ``[3, H, W, D]`` with D the axial slices, resized
to 512 x 512 x D with D the multiple of 4 in [4, 64] nearest to the slice count, nearest-neighbour
interpolation as RadFM's ``torch.nn.functional.interpolate`` default. Prepared volumes are stored
as one float16 channel (replicated at embedding time).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import numpy as np

from extractors.base import InputError, ModelUnavailableError
from extractors.ct_slicing import window_hu
from extractors.hf_common import HubExpert
from extractors.inputs import read_volume
from extractors.registry import ExpertSpec, register_expert

HUB_ID = "chaoyi-wu/RadFM"
WEIGHTS = "pytorch_model.bin"
PACKAGE = "medmix_radfm_model"
HU_RANGE = (-1000.0, 1000.0)
DEPTHS = tuple(range(4, 65, 4))


def radfm_depth(n_slices: int) -> int:
    """RadFM's target depth: the multiple of 4 in [4, 64] nearest to ``n_slices`` (ties: smaller)."""
    return min(DEPTHS, key=lambda d: (abs(d - n_slices), d))


def radfm_preprocess(volume_zyx: np.ndarray, size: int = 512, hu_range: tuple[float, float] = HU_RANGE) -> np.ndarray:
    """``[D, H, W]`` HU volume -> float32 ``[1, size, size, D']`` in [0, 1] (one channel)."""
    import torch
    import torch.nn.functional as F

    if volume_zyx.ndim != 3 or volume_zyx.shape[0] < 1:
        raise InputError(f"volume has shape {volume_zyx.shape}; expected [D, H, W]")
    grey = torch.from_numpy(window_hu(volume_zyx, hu_range)).permute(1, 2, 0)  # [H, W, D]
    depth = radfm_depth(volume_zyx.shape[0])
    out = F.interpolate(grey[None, None], size=(size, size, depth))  # nearest, RadFM's default
    return out[0].contiguous().numpy()


@register_expert(
    ExpertSpec(
        name="radfm",
        kinds=("volume",),
        role="teacher",
        dim=768,
        hub_id=HUB_ID,
        # The hub ships a zip archive, so weights are read from local_dir; "main" names the hub state the
        # user downloaded and must be replaced by the 40-hex commit they fetched (hub "Files and versions").
        revision="main",
        preprocessing={
            "hu_range": list(HU_RANGE),
            "channels": 3,
            "layout": "[3, H, W, D]",
            "size": 512,
            "depth": "nearest multiple of 4 in [4, 64] to the slice count",
            "interpolation": "nearest",
            "embedding": "mean of the 32 perceiver latents of RadFM's 3D ViT",
        },
        trust_remote_code=True,
        paper_name="RadFM",
        description="RadFM 3D ViT + perceiver visual tokens, mean-pooled (teacher).",
        gpu=True,
        mem_mb=16000,
    )
)
class RadFM(HubExpert):
    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._vit = None
        self._perceiver = None

    def prepare(self, value: Any) -> np.ndarray:
        pre = self.settings.preprocessing
        return radfm_preprocess(read_volume(value), int(pre["size"]), tuple(pre["hu_range"])).astype(np.float16)

    def _missing(self, what: str) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"expert 'radfm' needs model {HUB_ID!r} ({what}). Download the checkpoint zip from the hub, decompress "
            f"it and set experts.settings.radfm.local_dir to the folder holding {WEIGHTS}; clone "
            "github.com/chaoyi-wu/RadFM (pin a commit) and set experts.settings.radfm.options.code_dir to its "
            "Quick_demo/Model/RadFM folder; set allow_remote_code: true. Or use the demo profile."
        )

    def _import_code(self):
        code_dir = self.settings.options.get("code_dir")
        if not code_dir or not os.path.isfile(os.path.join(code_dir, "vit_3d.py")):
            raise self._missing(f"RadFM model code: options.code_dir={code_dir!r} has no vit_3d.py")
        self.remote_code()
        if PACKAGE not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                PACKAGE, os.path.join(code_dir, "__init__.py"), submodule_search_locations=[code_dir]
            )
            package = importlib.util.module_from_spec(spec)
            sys.modules[PACKAGE] = package
            spec.loader.exec_module(package)
        vit = importlib.import_module(f"{PACKAGE}.vit_3d")
        helpers = importlib.import_module(f"{PACKAGE}.helpers")
        return vit.ViT, helpers.PerceiverResampler

    def load(self) -> None:
        if self._vit is not None:
            return
        local_dir = self.settings.local_dir
        weights = os.path.join(local_dir, WEIGHTS) if local_dir else None
        if not weights or not os.path.isfile(weights):
            raise self._missing(f"weights: local_dir={local_dir!r} has no {WEIGHTS}")
        try:
            vit_cls, perceiver_cls = self._import_code()
        except ImportError as err:
            raise self._missing(f"importing RadFM's code failed: {err}") from err
        import torch

        self.pick_device()
        vit = vit_cls(image_size=512, frames=512, image_patch_size=32, frame_patch_size=4, dim=768, depth=12,
                      heads=8, mlp_dim=2048, dropout=0.1, emb_dropout=0.1)
        perceiver = perceiver_cls(dim=768, num_latents=32)
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        for module, prefix in ((vit, "embedding_layer.vision_encoder."), (perceiver, "embedding_layer.perceiver.")):
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not part:
                raise self._missing(f"{weights} holds no {prefix}* tensors")
            module.load_state_dict(part, strict=True)
        self._vit, self._perceiver = vit.to(self.device).eval(), perceiver.to(self.device).eval()

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        self.load()
        out = np.zeros((len(batch), self.dim), np.float32)
        for k, grey in enumerate(batch):  # one volume per forward: 512 x 512 x 64 voxels, 3 channels
            x = torch.from_numpy(grey.astype(np.float32)).to(self.device).expand(3, -1, -1, -1)[None]
            with torch.inference_mode(), self.autocast():
                tokens, _pos = self._vit(x)  # [1, n_tokens, 768]
                latents = self._perceiver(tokens[:, None, None])  # [1, 1, 32, 768]
            out[k] = latents.float().mean(dim=(1, 2))[0].cpu().numpy()
        return out
