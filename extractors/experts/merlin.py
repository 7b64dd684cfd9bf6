"""``merlin``: Merlin 3D CT encoder (MedMIX Table E1, biomedical CT expert; native 3D).

Model: the image tower of ``stanfordmimi/Merlin`` (an I3D-inflated ResNet-152, package
``merlin-vlm``, module ``merlin.models.i3res``) with the weights of the released checkpoint
``i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt`` (the one
``merlin.Merlin(ImageEmbedding=True)`` loads). Only the image tower is built: the
``encode_image.i3_resnet.*`` tensors are loaded with ``torch.load(weights_only=True)`` and
``strict=True``, so neither the Clinical-Longformer text tower nor torchvision's ImageNet weights
(which ``merlin.Merlin`` fetches at construction) are needed. Embedding = the 2048-d pooled image
features that ``Merlin(ImageEmbedding=True)`` returns (the model card's "image embeddings for
downstream tasks"), not normalised.

Preprocessing = Merlin's ``ImageTransforms`` (``merlin/data/monai_transforms.py``), implemented
here without MONAI: RAS orientation; resampling to 1.5 x 1.5 x 3 mm (trilinear, the voxel-centre
grid of MONAI ``Spacingd``: output size ``round((n - 1) * s_in / s_out) + 1``); HU clipped to
[-1000, 1000] and scaled to [0, 1]; symmetric zero padding to at least 224 x 224 x 160; centre crop
to 224 x 224 x 160 (x, y, z); the tensor is ``[1, X, Y, Z]``. Prepared volumes are kept as float16
(values in [0, 1], step <= 2^-11) to bound memory; the network runs in float32 (bf16 autocast on CUDA).

Orientation and spacing: volumes come from :func:`extractors.inputs.read_volume` (NIfTI and DICOM
reoriented from their affine / direction cosines) and are turned to RAS; the voxel spacing comes from
the NIfTI header (axes reordered to RAS) or the DICOM PixelSpacing / direction cosines / slice
positions. ``.npy``/``.npz`` arrays carry none (issue 18: it used to be silently assumed to be the
target spacing, which skips the resampling and gives the wrong field of view). An array's spacing
must be declared, in mm, in the array's axis order ``[z, y, x]`` (= ``[D, H, W]`` after
``volume_layout``), either

- per sample: a sidecar JSON next to the array, ``<file>.json`` (``ct/case1.npy`` ->
  ``ct/case1.npy.json``) holding ``{"spacing_mm": [z, y, x]}`` (it wins over the dataset setting), or
- per dataset: the preprocessing setting ``array_spacing_mm: [z, y, x]`` (recorded in the metadata).

An array with neither is an :class:`~extractors.base.InputError`: the sample is recorded as absent
with that reason, never treated as isotropic or as already resampled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import InputError, ModelUnavailableError, is_fatal
from extractors.hf_common import LOAD_ERRORS, HubExpert, load_state_complete, raise_unless_missing
from extractors.inputs import read_volume
from extractors.registry import ExpertSpec, register_expert

HUB_ID = "stanfordmimi/Merlin"
CHECKPOINT = "i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt"
TOWER_PREFIX = "encode_image.i3_resnet."
TARGET_SPACING = (1.5, 1.5, 3.0)
ROI = (224, 224, 160)
HU_RANGE = (-1000.0, 1000.0)


# -- geometry -------------------------------------------------------------------------------
def _spacing_triple(value: Any, where: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: spacing must be three numbers [z, y, x] in mm, got {value!r}") from err
    if len(out) != 3 or not all(np.isfinite(v) and v > 0 for v in out):
        raise InputError(f"{where}: spacing must be three positive numbers [z, y, x] in mm, got {value!r}")
    return out


def array_spacing_sidecar(path: str) -> tuple[float, float, float] | None:
    """``[z, y, x]`` mm from the sidecar ``<path>.json`` (``{"spacing_mm": [z, y, x]}``), or ``None`` if absent."""
    import json

    sidecar = f"{path}.json"
    if not os.path.isfile(sidecar):
        return None
    try:
        with open(sidecar, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        raise InputError(f"unreadable spacing sidecar {sidecar}: {err}") from err
    if not isinstance(meta, dict) or "spacing_mm" not in meta:
        raise InputError(f"spacing sidecar {sidecar} has no 'spacing_mm' [z, y, x]")
    return _spacing_triple(meta["spacing_mm"], sidecar)


def nifti_spacing_ras(path: str) -> tuple[float, float, float]:
    """Voxel spacing of a NIfTI file along the R, A, S axes (header only, no voxel data read)."""
    import nibabel as nib

    img = nib.load(path)
    ornt = nib.orientations.io_orientation(img.affine)
    zooms = img.header.get_zooms()[:3]
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        spacing[int(target)] = float(zooms[axis])
    return tuple(spacing)


def dicom_spacing_ras(folder: str) -> tuple[float, float, float]:
    """Voxel spacing of a DICOM series along the x, y, z patient axes (headers only).

    In-plane spacings follow the row / column direction cosines, the slice spacing is the median
    gap between slice positions along the slice normal (``SliceThickness`` if there is one slice).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except InvalidDicomError:
            continue
        except Exception as err:  # noqa: BLE001 - corrupt DICOM raises many kinds of errors
            if is_fatal(err):  # out of memory is not a property of the input
                raise
            raise InputError(f"unreadable DICOM file {f}: {err}") from err
        if hasattr(ds, "Rows"):
            headers.append(ds)
    if not headers or getattr(headers[0], "PixelSpacing", None) is None:
        raise InputError(f"DICOM series {folder} has no PixelSpacing")
    iop = np.asarray(getattr(headers[0], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    along_row, along_col = iop[:3], iop[3:]
    normal = np.cross(along_row, along_col)
    between_rows, between_cols = (float(v) for v in headers[0].PixelSpacing)
    positions = sorted(
        float(np.dot(normal, np.asarray(h.ImagePositionPatient, float)))
        for h in headers if getattr(h, "ImagePositionPatient", None) is not None
    )
    gaps = np.diff(positions)
    slice_mm = (float(np.median(gaps)) if len(gaps) and np.median(gaps) > 0
                else float(getattr(headers[0], "SliceThickness", 0) or 0))
    spacing = [0.0, 0.0, 0.0]
    for direction, mm in ((along_row, between_cols), (along_col, between_rows), (normal, slice_mm)):
        spacing[int(np.argmax(np.abs(direction)))] = mm
    if min(spacing) <= 0:
        raise InputError(f"DICOM series {folder}: cannot determine the voxel spacing (got {spacing})")
    return tuple(spacing)


def read_ct_ras(path: str, array_spacing: tuple[float, float, float] | None = None, layout: str = "DHW"):
    """``(volume [X, Y, Z] float32 HU in RAS, spacing (x, y, z) mm, spacing_source)``.

    :func:`extractors.inputs.read_volume` returns ``[D, H, W]`` pointing (S, P, L) for NIfTI and DICOM
    (``.npy``/``.npz`` arrays, read in ``layout``, are taken to follow the same convention); flipping H
    and W and reversing the axes gives RAS. ``array_spacing`` is the dataset's ``[z, y, x]`` spacing of
    arrays; a sidecar ``<file>.json`` wins; an array with neither raises :class:`InputError`.
    """
    spl = read_volume(path, layout)
    if os.path.isdir(path):
        spacing, source = dicom_spacing_ras(path), "dicom"
    elif path.endswith((".nii", ".nii.gz")):
        spacing, source = nifti_spacing_ras(path), "nifti"
    else:
        zyx = array_spacing_sidecar(path)
        source = "sidecar"
        if zyx is None and array_spacing is not None:
            zyx, source = _spacing_triple(array_spacing,
                                          "preprocessing.array_spacing_mm"), "preprocessing.array_spacing_mm"
        if zyx is None:
            raise InputError(
                f"volume {path} is an array without a declared voxel spacing: add {path}.json with "
                '{"spacing_mm": [z, y, x]} or set the preprocessing setting array_spacing_mm: [z, y, x] '
                "(see medmix/datasets/README.md)")
        spacing = tuple(reversed(zyx))  # [z, y, x] of the (S, P, L) array -> (x, y, z) in RAS
    ras = np.transpose(spl[:, ::-1, ::-1], (2, 1, 0))
    return np.ascontiguousarray(ras, dtype=np.float32), spacing, source


def merlin_preprocess(
    volume_xyz: np.ndarray,
    spacing: tuple[float, float, float],
    target_spacing: tuple[float, float, float] = TARGET_SPACING,
    roi: tuple[int, int, int] = ROI,
    hu_range: tuple[float, float] = HU_RANGE,
) -> np.ndarray:
    """Merlin's ImageTransforms on an RAS ``[X, Y, Z]`` HU volume -> float32 ``[1, *roi]`` in [0, 1]."""
    import torch
    import torch.nn.functional as F

    vol = torch.from_numpy(np.nan_to_num(volume_xyz, nan=hu_range[0]).astype(np.float32))[None, None]
    size = [max(1, int(round((n - 1) * s / t)) + 1)
            for n, s, t in zip(volume_xyz.shape, spacing, target_spacing, strict=True)]
    if list(volume_xyz.shape) != size:
        vol = F.interpolate(vol, size=size, mode="trilinear", align_corners=True)
    lo, hi = hu_range
    vol = ((vol.clamp(lo, hi) - lo) / (hi - lo))[0]
    pads = []
    for n, r in zip(reversed(vol.shape[1:]), reversed(roi), strict=True):
        extra = max(r - n, 0)
        pads += [extra // 2, extra - extra // 2]
    vol = F.pad(vol, pads, value=0.0)
    starts = [n // 2 - r // 2 for n, r in zip(vol.shape[1:], roi, strict=True)]
    vol = vol[:, starts[0] : starts[0] + roi[0], starts[1] : starts[1] + roi[1], starts[2] : starts[2] + roi[2]]
    return vol.contiguous().numpy()


# -- expert ---------------------------------------------------------------------------------
@register_expert(
    ExpertSpec(
        name="merlin",
        cost_note="not declared (no parameter count stated with confidence)",
        kinds=("volume",),
        role="biomed",
        dim=2048,
        hub_id=HUB_ID,
        # No verifiable commit sha was found for this repository: "main" resolves through the lock
        # (`medmix fetch` records the commit it downloads in medmix.lock.json), or pin
        # experts.settings.merlin.revision to a 40-hex commit.
        revision="main",
        preprocessing={
            "checkpoint": CHECKPOINT,
            "orientation": "RAS",
            "volume_layout": "DHW",  # axis order of .npy/.npz inputs (NIfTI/DICOM orient from their headers)
            # [z, y, x] mm of .npy/.npz arrays for the whole dataset; a sidecar <file>.json wins; with
            # neither, an array is an InputError (absent sample), never assumed to be at spacing_mm.
            "array_spacing_mm": None,
            "spacing_mm": list(TARGET_SPACING),
            "resample": "trilinear (MONAI Spacingd voxel-centre grid)",
            "hu_range": list(HU_RANGE),
            "scale": [0.0, 1.0],
            "pad_crop": list(ROI),
            "embedding": "I3ResNet-152 pooled image features (Merlin ImageEmbedding=True)",
        },
        paper_name="Merlin",
        description="Merlin 3D CT image embedding (I3D ResNet-152, 2048-d).",
        gpu=True,
        mem_mb=12000,
        gpu_mem_mb=12000,
        batch_sizes={"cpu": 1, "cuda": 4},
    )
)
class Merlin(HubExpert):
    availability_note = "It also needs the `merlin-vlm` package (pip install merlin-vlm) for the model code."

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._model = None

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "array_spacing": "sidecar <file>.json, else preprocessing.array_spacing_mm, "
                                                       "else InputError"}

    def prepare(self, value: Any) -> np.ndarray:
        pre = self.settings.preprocessing
        if self.settings.options.get("array_spacing_mm") is not None:
            raise ValueError("expert 'merlin': options.array_spacing_mm is replaced by the preprocessing setting "
                             "array_spacing_mm, in the array's axis order [z, y, x] (it changes the embeddings)")
        vol, spacing, _ = read_ct_ras(str(value), pre.get("array_spacing_mm"), pre.get("volume_layout", "DHW"))
        if min(spacing) <= 0:
            raise InputError(f"volume {value} has non-positive voxel spacing {spacing}")
        out = merlin_preprocess(vol, spacing, tuple(pre["spacing_mm"]), tuple(pre["pad_crop"]), tuple(pre["hu_range"]))
        return out.astype(np.float16)

    def checkpoint_path(self) -> str:
        name = self.settings.preprocessing["checkpoint"]
        source = self.model_source()
        if os.path.isdir(source):
            path = os.path.join(source, name)
            if not os.path.isfile(path):
                raise self.unavailable(FileNotFoundError(f"{name} not found in {source}"))
            return path
        kwargs = self.load_kwargs(source)
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(source, name, **kwargs)
        except LOAD_ERRORS as err:
            raise_unless_missing(err)
            raise self.unavailable(err) from err

    def load(self) -> None:
        if self._model is not None:
            return
        path = self.checkpoint_path()
        try:
            import torchvision
            from merlin.models import i3res
        except ImportError as err:
            raise ModelUnavailableError(
                f"expert 'merlin' needs the merlin-vlm package for Merlin's model code ({err}); "
                "install it with `pip install merlin-vlm` or use the demo profile"
            ) from err
        import torch

        self.pick_device()
        model = i3res.I3ResNet(
            torchvision.models.resnet152(weights=None), class_nb=1692, conv_class=True, ImageEmbedding=True
        )
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        tower = {k[len(TOWER_PREFIX) :]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
        if not tower:
            raise self.unavailable(ValueError(f"{path} holds no {TOWER_PREFIX}* tensors"))
        load_state_complete(model, tower, "expert 'merlin'", str(path))
        self._model = model.to(self.device).eval()

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        self.load()
        step = max(1, int(self.settings.options.get("volumes_per_forward", 2)))
        out = np.zeros((len(batch), self.dim), np.float32)
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            x = torch.from_numpy(np.stack(chunk).astype(np.float32)).to(self.device)
            with torch.inference_mode(), self.autocast():
                features = self._model(x)  # [1, n, 2048] (Merlin's ImageEmbedding output)
            out[start : start + len(chunk)] = features.float().reshape(len(chunk), -1).cpu().numpy()
        return out
