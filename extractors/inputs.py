"""Readers that turn a cohort cell (a path or a text) into an in-memory input.

Every reader raises :class:`~extractors.base.InputError` with a reason for unusable input, so
the runner records the sample as absent instead of crashing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from extractors.base import InputError

MAX_VOLUME_BYTES = 2 * 1024**3
MAX_TIMESERIES_CELLS = 50_000_000


def read_image(path: str):
    """An RGB ``PIL.Image``; Pillow's decompression-bomb limit stays in force."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as err:
        raise InputError(f"unreadable image {path}: {err}") from err


def read_text(text: str | None) -> str:
    if text is None or not str(text).strip():
        raise InputError("empty text")
    return str(text)


def read_timeseries(path: str):
    """A ``pandas.DataFrame`` (rows = time steps, columns = variables) from CSV or Parquet."""
    import pandas as pd

    if not os.path.isfile(path):
        raise InputError(f"time-series file not found: {path}")
    try:
        frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - any parser failure means unusable input
        raise InputError(f"unreadable time series {path}: {err}") from err
    if frame.size > MAX_TIMESERIES_CELLS:
        raise InputError(f"time series {path} has {frame.size} cells (limit {MAX_TIMESERIES_CELLS})")
    frame = frame.drop(columns=[c for c in ("time", "hour", "charttime") if c in frame.columns])
    values = frame.apply(pd.to_numeric, errors="coerce")
    if values.size == 0 or values.isna().all().all():
        raise InputError(f"time series {path} has no observed values")
    return values


def read_volume(path: str, layout: str = "DHW") -> np.ndarray:
    """A CT volume as float32 ``[D, H, W]`` (axial slices first) in Hounsfield units.

    NIfTI volumes are reoriented to RAS from their affine, so depth is the superior axis whatever
    the stored order; ``layout`` (``DHW`` or ``HWD``) applies only to ``.npy``/``.npz`` arrays,
    which carry no orientation.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"volume not found: {path}")
    try:
        if p.is_dir():
            vol = _read_dicom_series(p)
        elif path.endswith((".nii.gz", ".nii")):
            vol = _read_nifti(p)
        elif path.endswith(".npy"):
            vol = _orient_array(np.load(p, allow_pickle=False), layout, path)
        elif path.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                if not z.files:
                    raise InputError(f"empty npz {path}")
                vol = _orient_array(z[z.files[0]], layout, path)
        else:
            raise InputError(f"unsupported volume format: {path}")
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt files raise many kinds of errors
        raise InputError(f"unreadable volume {path}: {type(err).__name__}: {err}") from err
    if not np.isfinite(vol).any():
        raise InputError(f"volume {path} has no finite voxels")
    return vol


def _orient_array(arr: np.ndarray, layout: str, path: str) -> np.ndarray:
    if arr.ndim != 3:
        raise InputError(f"volume {path} has shape {arr.shape}; expected 3 dimensions")
    if layout == "HWD":
        arr = np.transpose(arr, (2, 0, 1))
    elif layout != "DHW":
        raise InputError(f"unknown volume layout {layout!r} (DHW or HWD)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_nifti(p: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(p))
    shape = img.header.get_data_shape()
    itemsize = np.dtype(img.header.get_data_dtype()).itemsize
    if len(shape) < 3:
        raise InputError(f"NIfTI {p} has shape {shape}; expected 3 dimensions")
    nbytes = int(np.prod(shape, dtype=np.int64)) * max(itemsize, 4)
    if nbytes > MAX_VOLUME_BYTES:
        raise InputError(f"NIfTI {p} would need {nbytes / 2**30:.1f} GiB (limit {MAX_VOLUME_BYTES / 2**30:.0f})")
    img = nib.as_closest_canonical(img)  # RAS: axis 2 runs inferior -> superior
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.ndim == 4:
        data = data[..., 0]
    # [X(R), Y(A), Z(S)] -> [Z, Y, X]: axial slices first.
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.float32)


def _read_dicom_series(folder: Path) -> np.ndarray:
    import pydicom

    slices = []
    for f in sorted(folder.iterdir()):
        if f.is_file():
            try:
                slices.append(pydicom.dcmread(str(f)))
            except Exception as err:  # noqa: BLE001
                raise InputError(f"unreadable DICOM file {f}: {err}") from err
    if not slices:
        raise InputError(f"no DICOM files in {folder}")
    # Sort along the slice normal (superior last), as the patient coordinate system defines it.
    def position(ds) -> float:
        ipp = getattr(ds, "ImagePositionPatient", None)
        iop = getattr(ds, "ImageOrientationPatient", None)
        if ipp is None or iop is None:
            return float(getattr(ds, "InstanceNumber", 0))
        row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        return float(np.dot(np.cross(row, col), np.asarray(ipp, float)))

    slices.sort(key=position)
    vols = []
    for ds in slices:
        arr = ds.pixel_array.astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        vols.append(arr * slope + intercept)
    return np.ascontiguousarray(np.stack(vols, axis=0), dtype=np.float32)


def read_tabular(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).any():
        raise InputError("no observed tabular values")
    return arr


def read_slide(path: str):
    """A slide as an RGB image (a tile folder or a pyramid reader plugs in here)."""
    return read_image(path)
