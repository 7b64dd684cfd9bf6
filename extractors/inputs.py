"""Readers that turn a cohort cell (a path or a text) into an in-memory input.

Every reader raises :class:`~extractors.base.InputError` with a reason naming the file for
unusable input (missing, unreadable, truncated, empty, all-NaN, wrongly shaped), so the runner
records the sample as absent instead of crashing.

CT orientation convention of :func:`read_volume`: a float32 ``[D, H, W]`` array in Hounsfield
units whose axes run inferior -> superior (D), anterior -> posterior (H, image rows) and patient
right -> patient left (W, image columns): the radiological display of axial slices, which is
how DICOM stores a standard axial series. NIfTI volumes and DICOM series are reoriented to it
from their affine / direction cosines, whatever their stored order; ``.npy``/``.npz`` arrays
carry no orientation and are taken as ``DHW`` or ``HWD`` (depth last) per ``layout``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import InputError, is_fatal
from medmix.store.inputs import TIME_COLUMNS

MAX_VOLUME_BYTES = 2 * 1024**3
MAX_TIMESERIES_CELLS = 50_000_000
#: Output axis codes of read_volume, in nibabel's convention (the direction each axis points to).
VOLUME_AXCODES = ("S", "P", "L")


def is_missing(value: Any) -> bool:
    """A cohort cell that means "modality absent": ``None`` or a float NaN (pandas nulls)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_image(path: str, mode: str = "RGB", draft_size: tuple[int, int] | None = None):
    """A ``PIL.Image`` in ``mode`` (RGB by default); Pillow's decompression-bomb limit stays in force.

    Truncated files fail (``LOAD_TRUNCATED_IMAGES`` is never set). ``draft_size`` lets JPEG
    files decode at a reduced scale (DCT scaling, never below ``draft_size``) when the caller
    downsizes anyway; other formats ignore it.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            if draft_size is not None and im.format == "JPEG":
                im.draft(mode if mode in ("L", "RGB") else None, draft_size)
            im.load()
            out = im.convert(mode)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        raise InputError(f"unreadable image {path}: {err}") from err
    if min(out.size) < 1:
        raise InputError(f"image {path} has size {out.size}")
    return out


def read_text(text: Any) -> str:
    """The note itself; ``None``, NaN and whitespace-only notes are unusable."""
    if is_missing(text) or not isinstance(text, str) or not text.strip():
        raise InputError("empty note" if not isinstance(text, str) or not str(text).strip()
                         else f"note is a {type(text).__name__}, not text")
    return text


def read_timeseries(path: str):
    """A ``pandas.DataFrame`` (rows = time steps, columns = variables) from CSV or Parquet.

    A column named ``time``, ``hour`` or ``charttime`` (any case) is the time axis: rows are
    sorted by it (stable; numbers, else date-times; an empty or unparseable time is an error), then
    every time column is dropped, so irregularly sampled or shuffled rows come out in time order.
    Without one, the file's row order is the time order. Other non-numeric entries become NaN.
    An all-NaN series is unusable.
    """
    import pandas as pd

    if not os.path.isfile(path):
        raise InputError(f"time-series file not found: {path}")
    try:
        frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - any parser failure means unusable input
        if is_fatal(err):  # out of memory is not a property of the input
            raise
        raise InputError(f"unreadable time series {path}: {type(err).__name__}: {err}") from err
    if frame.size > MAX_TIMESERIES_CELLS:
        raise InputError(f"time series {path} has {frame.size} cells (limit {MAX_TIMESERIES_CELLS})")
    frame = sort_by_time(frame, path)
    values = frame.apply(pd.to_numeric, errors="coerce")
    if values.size == 0 or values.isna().all().all():
        raise InputError(f"time series {path} has no observed values (empty or all NaN)")
    return values


def time_columns(columns) -> list[str]:
    """The columns recognised as a time axis, the primary one (``TIME_COLUMNS`` order) first."""
    found = [c for c in columns if str(c).strip().lower() in TIME_COLUMNS]
    return sorted(found, key=lambda c: TIME_COLUMNS.index(str(c).strip().lower()))


def sort_by_time(frame, path: str):
    """``frame`` with rows in the order of its primary time column and every time column dropped."""
    import pandas as pd

    found = time_columns(frame.columns)
    if not found:
        return frame
    raw = frame[found[0]]
    times = pd.to_numeric(raw, errors="coerce")
    if times.isna().any() and not raw.isna().any():  # not numbers: date-times (e.g. charttime)
        times = pd.to_datetime(raw.astype(str), errors="coerce")
    bad = np.flatnonzero(times.isna().to_numpy())
    if len(bad):
        raise InputError(f"time series {path}: time column {found[0]!r} has {len(bad)} empty or unparseable "
                         f"value(s), first at data row {bad[0] + 1} ({raw.iloc[bad[0]]!r})")
    order = np.argsort(times.to_numpy(), kind="stable")
    return frame.iloc[order].drop(columns=found).reset_index(drop=True)


def read_volume(path: str, layout: str = "DHW") -> np.ndarray:
    """A CT volume as float32 ``[D, H, W]`` in Hounsfield units (see the module docstring).

    ``path`` is a ``.nii``/``.nii.gz`` file, a folder holding one DICOM series, or a
    ``.npy``/``.npz`` array (``layout`` ``DHW`` or ``HWD``). Sizes are checked from the headers
    before any voxel is read.
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
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
            _check_size(arr.shape, arr.dtype.itemsize, path)
            vol = _orient_array(np.asarray(arr), layout, path)
        elif path.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                if not z.files:
                    raise InputError(f"empty npz {path}")
                shape, itemsize = _npz_member_header(z, z.files[0])
                _check_size(shape, itemsize, path)  # before the member is decompressed
                vol = _orient_array(z[z.files[0]], layout, path)
        else:
            raise InputError(f"unsupported volume format: {path}")
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt/truncated files raise many kinds of errors
        if is_fatal(err):  # out of memory is not a property of the input
            raise
        raise InputError(f"unreadable volume {path}: {type(err).__name__}: {err}") from err
    if min(vol.shape) < 1:
        raise InputError(f"volume {path} has shape {vol.shape}")
    if not np.isfinite(vol).any():
        raise InputError(f"volume {path} has no finite voxels")
    return vol


def _npz_member_header(npz, name: str) -> tuple[tuple[int, ...], int]:
    """Shape and item size of one ``.npz`` member, read from its ``.npy`` header only."""
    with npz.zip.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(fh)
    return tuple(shape), dtype.itemsize


def _check_size(shape: tuple[int, ...], itemsize: int, path: str) -> None:
    nbytes = int(np.prod(shape, dtype=np.int64)) * max(itemsize, 4)
    if nbytes > MAX_VOLUME_BYTES:
        raise InputError(f"volume {path} would need {nbytes / 2**30:.1f} GiB (limit {MAX_VOLUME_BYTES / 2**30:.0f})")


def _orient_array(arr: np.ndarray, layout: str, path: str) -> np.ndarray:
    if arr.ndim != 3:
        raise InputError(f"volume {path} has shape {arr.shape}; expected 3 dimensions ({layout})")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"volume {path} has dtype {arr.dtype}; expected real numbers")
    if layout == "HWD":
        arr = np.transpose(arr, (2, 0, 1))
    elif layout != "DHW":
        raise InputError(f"unknown volume layout {layout!r} (DHW or HWD)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def reorient(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder/flip a 3D array with a RAS voxel-to-world ``affine`` into ``VOLUME_AXCODES``."""
    from nibabel import orientations

    transform = orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.axcodes2ornt(VOLUME_AXCODES)
    )
    return np.ascontiguousarray(orientations.apply_orientation(data, transform), dtype=np.float32)


def _read_nifti(p: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(p))
    shape = img.header.get_data_shape()
    if len(shape) < 3 or (len(shape) > 3 and int(np.prod(shape[3:])) != 1):
        raise InputError(f"NIfTI {p} has shape {shape}; expected a 3D volume")
    _check_size(shape[:3], np.dtype(img.header.get_data_dtype()).itemsize, str(p))
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:3])
    return reorient(data, img.affine)


def _read_dicom_series(folder: Path) -> np.ndarray:
    """One DICOM series: slices sorted along the slice normal, rescale slope/intercept applied.

    Files that are not DICOM are skipped; a folder with several series, slices of different
    sizes or no usable slices is unusable.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except InvalidDicomError:
            continue
        except Exception as err:  # noqa: BLE001 - truncated/corrupt headers
            if is_fatal(err):  # out of memory is not a property of the input
                raise
            raise InputError(f"unreadable DICOM file {f}: {type(err).__name__}: {err}") from err
        if "PixelData" in ds or hasattr(ds, "Rows"):
            headers.append((f, ds))
    if not headers:
        raise InputError(f"no DICOM image files in {folder}")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series; expected one")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"DICOM series {folder} mixes slice sizes {sorted(sizes)}")
    _check_size((len(headers), *sizes.pop()), 4, str(folder))

    iop = getattr(headers[0][1], "ImageOrientationPatient", None)
    row_cos, col_cos = (np.asarray(iop[:3], float), np.asarray(iop[3:], float)) if iop else (
        np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    normal = np.cross(row_cos, col_cos)

    def position(ds) -> float:
        ipp = getattr(ds, "ImagePositionPatient", None)
        if ipp is None or iop is None:
            return float(getattr(ds, "InstanceNumber", 0))
        return float(np.dot(normal, np.asarray(ipp, float)))

    headers.sort(key=lambda item: position(item[1]))
    slices = []
    for f, _ in headers:
        try:
            ds = pydicom.dcmread(str(f))
            arr = ds.pixel_array.astype(np.float32)
        except Exception as err:  # noqa: BLE001 - truncated pixel data, unsupported compression
            if is_fatal(err):  # out of memory is not a property of the input
                raise
            raise InputError(f"unreadable DICOM pixel data in {f}: {type(err).__name__}: {err}") from err
        if arr.ndim != 2:
            raise InputError(f"DICOM file {f} has pixel shape {arr.shape}; expected one 2D slice")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append(arr * slope + intercept)
    volume = np.stack(slices, axis=0)  # [slice (along +normal), row (along col_cos), column (along row_cos)]
    # Voxel axes -> LPS directions -> RAS (negate x and y) for nibabel's orientation helpers.
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, 0] = normal * lps_to_ras
    affine[:3, 1] = col_cos * lps_to_ras
    affine[:3, 2] = row_cos * lps_to_ras
    return reorient(volume, affine)


def read_tabular(values) -> np.ndarray:
    """A float32 vector from a list of numbers or the cohort's JSON list (``null`` = NaN)."""
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError as err:
            raise InputError(f"tabular input is not a JSON list: {err}") from err
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise InputError(f"tabular input is a {type(values).__name__}, expected a list of numbers")
    try:
        arr = np.array([np.nan if v is None else v for v in np.asarray(values, dtype=object).reshape(-1)],
                       dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"tabular input has non-numeric values ({err}); declare such columns in the dataset's tabular "
            "modality as `categorical: [...]` (or set `infer_categorical: true`) in config.yaml"
        ) from err
    if arr.size == 0 or not np.isfinite(arr).any():
        raise InputError("no observed tabular values")
    return arr


def read_slide(path: str):
    """A slide as an RGB image (a tile folder or a pyramid reader plugs in here)."""
    return read_image(path)
