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

import errno
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import InputError, is_fatal
from medmix.store.inputs import TIME_COLUMNS

MAX_VOLUME_BYTES = 2 * 1024**3
MAX_TIMESERIES_CELLS = 50_000_000
#: On-disk size above which a time-series file is refused before it is parsed.
MAX_TIMESERIES_BYTES = 512 * 1024**2
#: Output axis codes of read_volume, in nibabel's convention (the direction each axis points to).
VOLUME_AXCODES = ("S", "P", "L")


def check_file(path: str, what: str, directory_ok: bool = False) -> None:
    """:class:`InputError` unless ``path`` (links followed) is a regular file, or a folder when
    ``directory_ok``: the reason says what it is instead ("not found", "is a directory", "is a
    symlink loop", "is not a regular file" for a FIFO or a device, which reading could block on or
    never finish). ``what`` names the input kind (``image``, ``time-series``...)."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"{what} path {path} is a symlink loop (too many levels of symbolic links)") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{what} file not found: {path}") from None
        raise InputError(f"{what} path {path} cannot be read: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        if directory_ok:
            return
        raise InputError(f"{what} path {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} path {path} is not a regular file (a FIFO, socket or device)")


def is_missing(value: Any) -> bool:
    """A cohort cell that means "modality absent": ``None`` or a float NaN (pandas nulls)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_image(path: str, mode: str = "RGB", draft_size: tuple[int, int] | None = None):
    """A ``PIL.Image`` in ``mode`` (RGB by default) within Pillow's decompression-bomb limit.

    Pillow refuses images over twice ``Image.MAX_IMAGE_PIXELS`` but only warns between one and
    two times it; here the warning is an error too, so any image over the limit is refused before
    its pixels are decoded (the limit itself is never raised or removed). Truncated files fail
    (``LOAD_TRUNCATED_IMAGES`` is never set). ``draft_size`` lets JPEG files decode at a reduced
    scale (DCT scaling, never below ``draft_size``) when the caller downsizes anyway; other
    formats ignore it. The EXIF orientation (e.g. a phone photo or a scanner's JPEG stored sideways
    with orientation 6) is applied right after decoding, before any conversion, so the pixels are
    the upright image a viewer shows. 16-bit greyscale (Pillow modes ``I;16*`` and ``I``, e.g. a
    16-bit PNG) is scaled to 8 bits over the full 16-bit range (``/ 257``) instead of Pillow's
    clipping at 255; CMYK (e.g. a CMYK JPEG) is converted by Pillow.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    check_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # stored with width and height swapped
                if draft_size is not None and im.format == "JPEG":
                    im.draft(mode if mode in ("L", "RGB") else None, draft_size[::-1] if turned else draft_size)
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                out = _from_16bit(im).convert(mode) if im.mode in WIDE_GREY_MODES else im.convert(mode)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise InputError(f"image {path} exceeds the decompression-bomb pixel limit "
                         f"({Image.MAX_IMAGE_PIXELS} pixels): {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"unreadable image {path}: {err}") from err
    if min(out.size) < 1:
        raise InputError(f"image {path} has size {out.size}")
    return out


#: The EXIF orientation tag (0x0112).
EXIF_ORIENTATION = 0x0112
#: Greyscale modes wider than 8 bits that Pillow's ``convert`` would clip at 255.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _from_16bit(im):
    """An 8-bit ``L`` image from a 16-bit greyscale one (0..65535 -> 0..255, rounded)."""
    from PIL import Image

    arr = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")


def read_text(text: Any) -> str:
    """The note itself; ``None``, NaN and whitespace-only notes are unusable."""
    if is_missing(text) or not isinstance(text, str) or not text.strip():
        raise InputError("empty note" if not isinstance(text, str) or not str(text).strip()
                         else f"note is a {type(text).__name__}, not text")
    return text


def read_timeseries(path: str):
    """A ``pandas.DataFrame`` (rows = time steps, columns = variables) from CSV or Parquet.

    Sizes are bounded before parsing: the file must be under ``MAX_TIMESERIES_BYTES`` on disk
    and, from the Parquet footer or the CSV header line, hold at most ``MAX_TIMESERIES_CELLS``
    cells (a CSV is read up to that many rows and refused if it has more).

    A column named ``time``, ``hour`` or ``charttime`` (any case) is the time axis: rows are
    sorted by it (stable; numbers, else date-times; an empty or unparseable time is an error), then
    every time column is dropped, so irregularly sampled or shuffled rows come out in time order.
    Without one, the file's row order is the time order. Empty cells (and pandas' null spellings:
    ``NA``, ``NaN``...) are unobserved (NaN); any other value that is not a number (e.g. a decimal
    comma ``1,5`` or ``<5``) makes the series unusable, the reason naming the column and the first
    such row. An all-NaN series is unusable.
    """
    import pandas as pd

    check_file(path, "time-series")
    nbytes = os.path.getsize(path)
    if nbytes > MAX_TIMESERIES_BYTES:
        raise InputError(f"time series {path} is {nbytes} bytes (limit {MAX_TIMESERIES_BYTES}); not parsed")
    try:
        frame = _read_bounded_table(path)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any parser failure means unusable input
        if is_fatal(err):  # out of memory is not a property of the input
            raise
        raise InputError(f"unreadable time series {path}: {type(err).__name__}: {err}") from err
    check_numeric(frame, path)  # before sorting: data rows are the file's
    frame = sort_by_time(frame, path)
    numeric = all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in frame.dtypes)
    values = frame if numeric else frame.apply(pd.to_numeric, errors="coerce")  # to_numeric keeps numbers as they are
    if values.size == 0 or values.isna().all().all():
        raise InputError(f"time series {path} has no observed values (empty or all NaN)")
    return values


def check_numeric(frame, path: str) -> None:
    """:class:`InputError` if a variable column (time columns aside) holds a value that is neither
    empty / null nor a number: a decimal comma (``1,5``) or a text (``<5``) would otherwise become
    an unobserved value silently, and a column of them an all-NaN variable."""
    import pandas as pd

    timed = set(time_columns(frame.columns))
    for k, col in enumerate(frame.columns):
        if col in timed:
            continue
        raw = frame.iloc[:, k]
        if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
            continue
        mask = (pd.to_numeric(raw, errors="coerce").isna() & raw.notna()).to_numpy()
        if not mask.any():
            continue
        bad = np.flatnonzero(mask)[raw[mask].astype(str).str.strip().ne("").to_numpy()]  # blank cells: unobserved
        if len(bad):
            raise InputError(
                f"time series {path}: column {col!r} has {len(bad)} value(s) that are not numbers, first at data row "
                f"{bad[0] + 1} ({raw.iloc[bad[0]]!r}); write numbers with a '.' decimal point and leave unobserved "
                "values empty"
            )


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


def _read_bounded_table(path: str):
    """The table at ``path``, refused from its metadata / header if it exceeds ``MAX_TIMESERIES_CELLS``."""
    import pandas as pd

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        cells = int(meta.num_rows) * int(meta.num_columns)
        if cells > MAX_TIMESERIES_CELLS:
            raise InputError(f"time series {path} has {meta.num_rows} rows x {meta.num_columns} columns "
                             f"(limit {MAX_TIMESERIES_CELLS} cells); not read")
        return pd.read_parquet(path)
    n_columns = max(_csv_header_width(path), 1)
    max_rows = MAX_TIMESERIES_CELLS // n_columns
    frame = pd.read_csv(path, nrows=max_rows + 1)
    if len(frame) > max_rows:
        raise InputError(f"time series {path} has over {max_rows} rows x {n_columns} columns "
                         f"(limit {MAX_TIMESERIES_CELLS} cells)")
    return frame


def _csv_header_width(path: str) -> int:
    """Fields of a CSV's header line (the csv module; pandas' parser costs more than the whole
    small file). A header it cannot read counts as one field: the full read reports the problem."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return len(next(csv.reader(fh), []))
    except (UnicodeDecodeError, csv.Error):
        return 1


def read_volume(path: str, layout: str = "DHW") -> np.ndarray:
    """A CT volume as float32 ``[D, H, W]`` in Hounsfield units (see the module docstring).

    ``path`` is a ``.nii``/``.nii.gz`` file, a folder holding one DICOM series, or a
    ``.npy``/``.npz`` array (``layout`` ``DHW`` or ``HWD``). Sizes are checked from the headers
    before any voxel is read.
    """
    p = Path(path)
    if not os.path.lexists(path):
        raise InputError(f"volume not found: {path}")
    check_file(path, "volume", directory_ok=True)
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


def check_nifti_header(path: str | Path):
    """The nibabel image of a 3D NIfTI whose header shape x item size is within the volume limit
    (nothing but the header read); InputError otherwise. For readers that decode it themselves."""
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.header.get_data_shape()
    if len(shape) < 3 or (len(shape) > 3 and int(np.prod(shape[3:])) != 1):
        raise InputError(f"NIfTI {path} has shape {shape}; expected a 3D volume")
    _check_size(shape[:3], np.dtype(img.header.get_data_dtype()).itemsize, str(path))
    return img


def _read_nifti(p: Path) -> np.ndarray:
    img = check_nifti_header(p)
    shape = img.header.get_data_shape()
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:3])
    return reorient(data, img.affine)


def _read_dicom_series(folder: Path) -> np.ndarray:
    """One DICOM series: slices sorted along the slice normal, the modality LUT applied (HU).

    Files that are not DICOM are skipped; a folder with several series, slices of different
    sizes, multi-frame or multi-sample files, or no usable slices is unusable, and so is a series with two slices at one
    position or a gap (neighbouring slices more than ``MAX_SLICE_GAP`` times the median spacing apart: a missing
    slice); the several-series reason names their SeriesInstanceUIDs. Compressed pixel
    data (JPEG lossless, JPEG-LS, JPEG 2000, RLE) decodes through pydicom's pylibjpeg plugins.
    The decoded size (rows x columns x frames x samples, in float32) is checked from the headers
    before any pixel is decoded.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

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
    series = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series (SeriesInstanceUID {', '.join(series)}); "
                         "expected one: put each series in its own folder")
    _check_dicom_size(headers, folder)
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"DICOM series {folder} mixes slice sizes {sorted(sizes)}")

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
    if iop is not None and all(getattr(ds, "ImagePositionPatient", None) is not None for _, ds in headers):
        _check_spacing(folder, [position(ds) for _, ds in headers])
    slices = []
    for f, head in headers:
        try:
            ds = pydicom.dcmread(str(f))
            arr = ds.pixel_array
        except Exception as err:  # noqa: BLE001 - truncated pixel data, unsupported compression
            if is_fatal(err):  # out of memory is not a property of the input
                raise
            syntax = getattr(getattr(head, "file_meta", None), "TransferSyntaxUID", None)
            raise InputError(f"unreadable DICOM pixel data in {f} (transfer syntax "
                             f"{getattr(syntax, 'name', syntax)}): {type(err).__name__}: {err}") from err
        if arr.ndim != 2:
            raise InputError(f"DICOM file {f} has pixel shape {arr.shape}; expected one 2D slice")
        hu = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        slices.append(hu)
    volume = np.stack(slices, axis=0)  # [slice (along +normal), row (along col_cos), column (along row_cos)]
    # Voxel axes -> LPS directions -> RAS (negate x and y) for nibabel's orientation helpers.
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, 0] = normal * lps_to_ras
    affine[:3, 1] = col_cos * lps_to_ras
    affine[:3, 2] = row_cos * lps_to_ras
    return reorient(volume, affine)


def _check_dicom_size(headers: list, folder: Path) -> None:
    """Refuse a series whose decoded pixels (every frame and sample, as float32) exceed the limit,
    or whose files are not single 2D greyscale frames, from the headers alone."""
    total = 0
    for f, ds in headers:
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
            nbytes = max(int(getattr(ds, "BitsAllocated", 16) or 16) // 8, 4)
        except (AttributeError, TypeError, ValueError) as err:
            raise InputError(f"DICOM file {f} has unusable image header fields: {err}") from err
        if min(rows, cols, frames, samples) < 1:
            raise InputError(f"DICOM file {f} has {rows}x{cols} pixels, {frames} frames, {samples} samples")
        total += rows * cols * frames * samples * nbytes
        if total > MAX_VOLUME_BYTES:
            raise InputError(f"DICOM series {folder} would need over {total / 2**30:.1f} GiB decoded "
                             f"(limit {MAX_VOLUME_BYTES / 2**30:.0f}; {f.name}: {rows}x{cols} x {frames} frames "
                             f"x {samples} samples)")
        if frames != 1 or samples != 1:
            what = (f"is multi-frame ({frames} frames)" if frames > 1
                    else f"has {samples} samples per pixel (colour)")
            raise InputError(f"DICOM file {f} {what}; expected one 2D greyscale slice per file "
                             "(a folder of single-frame slices)")


#: A step between neighbouring slices larger than this times the median step is a missing slice.
MAX_SLICE_GAP = 1.5


def _check_spacing(folder: Path, positions: list[float]) -> None:
    """Refuse a series with two slices at one position or a gap (a missing slice) along the normal."""
    if len(positions) < 2:
        return
    pos = np.asarray(positions, dtype=float)
    steps = np.diff(pos)
    dup = np.flatnonzero(steps < 1e-3)
    if len(dup):
        raise InputError(f"DICOM series {folder} has two slices at position {pos[dup[0]]:.2f} mm "
                         "along the slice normal")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > MAX_SLICE_GAP * median)
    if len(gaps):
        k = int(gaps[0])
        raise InputError(
            f"DICOM series {folder} has a gap: slices at {pos[k]:.2f} and {pos[k + 1]:.2f} mm are {steps[k]:.2f} mm "
            f"apart, the usual spacing is {median:.2f} mm (a missing slice?)"
        )


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
