"""``radfm``: RadFM 3D vision encoder (MedMIX Table E1, CT teacher; native 3D, training only).

RadFM (chaoyi-wu/RadFM) is not a pip package: its checkpoint is a zip on the hub (``chaoyi-wu/RadFM``)
that must be decompressed to ``pytorch_model.bin`` (its README, step S2), and its model code lives in
a GitHub repository. medmix does not import that code: :mod:`extractors.radfm_vision` re-implements
RadFM's visual path (3D ViT + perceiver resampler, ``MyEmbedding``'s hyper-parameters) with the same
parameter names, and the checkpoint's ``embedding_layer.vision_encoder.*`` /
``embedding_layer.perceiver.*`` tensors are loaded into it with ``strict=True``
(``torch.load(weights_only=True, mmap=True)``; a ``model.safetensors`` is preferred if present). The
13B language model is never loaded and no remote code runs. So this expert needs only ``local_dir``:
the folder holding the decompressed ``pytorch_model.bin``, or nothing once ``medmix fetch`` has
downloaded the zip at the pinned / locked commit and unpacked it (:func:`~extractors.hf_common.unpacked_dir`,
read when ``local_dir`` is unset). An optional ``radfm_vision_config.json``
there overrides the architecture (:class:`~extractors.radfm_vision.RadFMVisionConfig`; the tests use
it for a tiny random-weight model).

Embedding = mean of the 32 perceiver latents (768 dims): the visual tokens RadFM feeds its language
model, before its final projection to the LLM width.

Preprocessing (RadFM's 3D input convention, ``stack_images`` in its dataset code): intensity as
below, grey replicated to 3 channels, laid out ``[3, H, W, D]`` with D the axial slices, resized
to 512 x 512 x D with D the multiple of 4 in [4, 64] nearest to the slice count, nearest-neighbour
interpolation as RadFM's ``torch.nn.functional.interpolate`` default. Prepared volumes are stored
as one float16 channel (replicated at embedding time).

Intensity (issue 18; preprocessing ``intensity``). What was established, and how: RadFM's 3D
training volumes (Radiopaedia, RadFM repository ``src/Dataset/dataset/jpg2nii_data_convert.py`` and
``nii2npy_for_radiopaedio.py``) were built from the case pages' **display images**: 8-bit JPEG slices
(``cv2.imread(..., 0)``, already windowed by whoever uploaded them), resized to 512 x 512 and
stacked; its loaders (``src/Dataset/dataset/radiopaedia.py``: ``RadioVQA_Dataset``,
``RadioCaption_Dataset``, ``Radio_Modality_Dataset``) then normalise **each volume by its own
min and max**: ``(image - image.min()) / (image.max() - image.min())``. RadFM never saw Hounsfield
units, and a linear +-1000 HU map squeezes soft tissue (about -100..+100 HU) into ~10 % of the range.
Which display window each uploader used is not recorded; abdominal/chest CT cases are most often
shown in a soft-tissue window, so the default is ``intensity: display_window_minmax``: HU clipped to
``display_window_hu`` = [-160, 240] (window width 400, level 40, the standard soft-tissue window),
then per-volume min-max to [0, 1] (a constant volume gives zeros). ``intensity: linear_hu`` keeps
the former rule (``hu_range`` clipped and scaled linearly, no per-volume normalisation).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from extractors.base import InputError, ModelUnavailableError, fetch_hint
from extractors.ct_slicing import window_hu
from extractors.hf_common import HubExpert, raise_unless_missing, unpacked_dir
from extractors.inputs import read_volume
from extractors.registry import ExpertSpec, register_expert

HUB_ID = "chaoyi-wu/RadFM"
WEIGHTS = "pytorch_model.bin"
SAFE_WEIGHTS = "model.safetensors"
ARCH_FILE = "radfm_vision_config.json"
HU_RANGE = (-1000.0, 1000.0)
#: Soft-tissue display window (width 400 HU, level 40 HU).
DISPLAY_WINDOW_HU = (-160.0, 240.0)
INTENSITY_RULES = ("display_window_minmax", "linear_hu")
DEPTHS = tuple(range(4, 65, 4))


def radfm_depth(n_slices: int) -> int:
    """RadFM's target depth: the multiple of 4 in [4, 64] nearest to ``n_slices`` (ties: smaller)."""
    return min(DEPTHS, key=lambda d: (abs(d - n_slices), d))


def radfm_intensity(volume: np.ndarray, intensity: str = "display_window_minmax",
                    window: tuple[float, float] = DISPLAY_WINDOW_HU,
                    hu_range: tuple[float, float] = HU_RANGE) -> np.ndarray:
    """HU -> [0, 1] grey as RadFM's training volumes (see the module docstring); float32."""
    if intensity == "linear_hu":
        return window_hu(volume, hu_range)
    if intensity != "display_window_minmax":
        raise ValueError(f"unknown RadFM intensity rule {intensity!r} (one of {INTENSITY_RULES})")
    lo, hi = window
    shown = np.clip(np.nan_to_num(volume.astype(np.float32), nan=lo), lo, hi)
    vmin, vmax = float(shown.min()), float(shown.max())
    if vmax <= vmin:
        return np.zeros(shown.shape, np.float32)
    return ((shown - vmin) / (vmax - vmin)).astype(np.float32)


def radfm_preprocess(volume_zyx: np.ndarray, size: int = 512, hu_range: tuple[float, float] = HU_RANGE,
                     intensity: str = "display_window_minmax",
                     window: tuple[float, float] = DISPLAY_WINDOW_HU) -> np.ndarray:
    """``[D, H, W]`` HU volume -> float32 ``[1, size, size, D']`` in [0, 1] (one channel)."""
    import torch
    import torch.nn.functional as F

    if volume_zyx.ndim != 3 or volume_zyx.shape[0] < 1:
        raise InputError(f"volume has shape {volume_zyx.shape}; expected [D, H, W]")
    grey = torch.from_numpy(radfm_intensity(volume_zyx, intensity, window, hu_range)).permute(1, 2, 0)  # [H, W, D]
    depth = radfm_depth(volume_zyx.shape[0])
    out = F.interpolate(grey[None, None], size=(size, size, depth))  # nearest, RadFM's default
    return out[0].contiguous().numpy()


@register_expert(
    ExpertSpec(
        name="radfm",
        cost_note="teacher (training only); not declared",
        kinds=("volume",),
        role="teacher",
        dim=768,
        hub_id=HUB_ID,
        # The hub ships a zip archive (pytorch_model.zip): `medmix fetch` downloads and unpacks it at this
        # revision; no verifiable commit sha was found, so "main" resolves through the lock
        # (medmix.lock.json), or pin experts.settings.radfm.revision to a 40-hex commit.
        revision="main",
        preprocessing={
            "volume_layout": "DHW",  # axis order of .npy/.npz inputs (NIfTI/DICOM orient from their headers)
            "intensity": "display_window_minmax",  # RadFM trained on display-windowed, per-volume min-max images
            "display_window_hu": list(DISPLAY_WINDOW_HU),  # soft tissue W400/L40
            "hu_range": list(HU_RANGE),  # used only by intensity: linear_hu
            "channels": 3,
            "layout": "[3, H, W, D]",
            "size": 512,
            "depth": "nearest multiple of 4 in [4, 64] to the slice count",
            "interpolation": "nearest",
            "embedding": "mean of the 32 perceiver latents of RadFM's 3D ViT",
        },
        paper_name="RadFM",
        description="RadFM 3D ViT + perceiver visual tokens, mean-pooled (teacher).",
        gpu=True,
        mem_mb=16000,
        gpu_mem_mb=32000,
        batch_sizes={"cpu": 1, "cuda": 2},
    )
)
class RadFM(HubExpert):
    # RadFM's visual path lives in radfm_vision.py: editing it must rerun this expert.

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._model = None

    def prepare(self, value: Any) -> np.ndarray:
        pre = self.settings.preprocessing
        volume = read_volume(value, pre.get("volume_layout", "DHW"))
        return radfm_preprocess(volume, int(pre["size"]), tuple(pre["hu_range"]),
                                str(pre.get("intensity", "linear_hu")),
                                tuple(pre.get("display_window_hu", DISPLAY_WINDOW_HU))).astype(np.float16)

    def _missing(self, what: str) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"expert 'radfm' needs model {HUB_ID!r} at revision {self.settings.revision!r} ({what}). "
            f"{fetch_hint('radfm')[:-1]} (it downloads the checkpoint zip and unpacks {WEIGHTS}; the folder then "
            f"holds the decompressed {WEIGHTS}). Or use the demo profile.")

    def fetched_dir(self) -> str | None:
        """The folder ``medmix fetch`` unpacked the zip into for the pinned / locked commit (None: unknown commit)."""
        commit = None if self.settings.local_dir else self.resolved_commit()
        if commit is None:
            if not self.settings.local_dir:
                self.hub_revision(str(self.settings.model_id))  # warns once that "main" is not locked
            return None
        return str(unpacked_dir(str(self.settings.model_id), commit))

    def _weights(self) -> str:
        local_dir = self.settings.local_dir or self.fetched_dir()
        for name in (SAFE_WEIGHTS, WEIGHTS):
            if local_dir and os.path.isfile(os.path.join(local_dir, name)):
                return os.path.join(local_dir, name)
        raise self._missing(f"weights: {local_dir or 'no local_dir and no fetched commit'} has no {WEIGHTS}")

    def load(self) -> None:
        if self._model is not None:
            return
        weights = self._weights()
        import torch

        from extractors.radfm_vision import RadFMVision, RadFMVisionConfig

        arch_path = os.path.join(os.path.dirname(weights), ARCH_FILE)
        arch = RadFMVisionConfig()
        if os.path.isfile(arch_path):
            with open(arch_path) as fh:
                arch = RadFMVisionConfig(**json.load(fh))
        if arch.dim != self.dim:
            raise ValueError(f"{arch_path}: dim {arch.dim} differs from the registered RadFM dim {self.dim}")
        self.pick_device()
        model = RadFMVision(arch)
        try:
            if weights.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(weights)
            else:
                try:  # mmap: only the visual tensors of the ~30 GB checkpoint are read into memory
                    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as err:
                    if "mmap" not in str(err):
                        raise
                    state = torch.load(weights, map_location="cpu", weights_only=True)  # legacy format
            model.load_radfm_state(state, weights)
        except (KeyError, RuntimeError, OSError) as err:
            raise_unless_missing(err)  # out of memory / CUDA errors are not about the checkpoint
            raise self._missing(f"{weights} could not be loaded as RadFM's visual encoder: {err}") from err
        self._model = model.to(self.device).eval()

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        self.load()
        out = np.zeros((len(batch), self.dim), np.float32)
        for k, grey in enumerate(batch):  # one volume per forward: 512 x 512 x 64 voxels, 3 channels
            x = torch.from_numpy(grey.astype(np.float32)).to(self.device).expand(3, -1, -1, -1)[None]
            with torch.inference_mode(), self.autocast():
                latents = self._model(x)  # [1, 32, 768]
            out[k] = latents.float().mean(dim=1)[0].cpu().numpy()
        return out
