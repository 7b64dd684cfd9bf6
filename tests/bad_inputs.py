"""Fixture builders of the bad-input suite (tests/test_bad_inputs.py).

``write_cohort`` writes a small, mostly good manifest cohort (24 samples, a split column, one
binary label; an image, a CT volume, a note file, a series and two static columns) in which each
per-sample bad input replaces ONE sample's file, so every extraction job stays under
``extraction.max_failed_fraction`` and one ``snakemake`` run covers every per-sample case.
``CASES`` says which sample holds which bad input.
"""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

N = 24
SPLITS = ["train"] * 14 + ["val"] * 5 + ["test"] * 5
DEPTH, SIDE = 6, 16
SERIES_VARIABLES = ["hr", "sbp", "spo2"]

#: (modality, sample id) of each per-sample case. s0 is always good (the reference sample).
CASES: dict[str, tuple[str, str]] = {
    # image (xray)
    "corrupt_png": ("xray", "s1"),
    "truncated_png": ("xray", "s2"),
    "png_16bit": ("xray", "s3"),
    "cmyk_jpeg": ("xray", "s4"),
    "corrupt_jpeg": ("xray", "s5"),
    "truncated_jpeg": ("xray", "s6"),
    "huge_png": ("xray", "s7"),
    "huge_jpeg": ("xray", "s8"),
    "bomb_1_2x_png": ("xray", "s9"),
    "exif_rotated_jpeg": ("xray", "s10"),  # stored sideways, EXIF orientation 6: decodes upright
    "directory_path": ("xray", "s11"),  # the cell names a folder
    # volume (ct)
    "truncated_nifti": ("ct", "s1"),
    "noncanonical_nifti": ("ct", "s2"),
    "dicom_missing_slice": ("ct", "s3"),
    "dicom_two_series": ("ct", "s4"),
    "dicom_multiframe": ("ct", "s5"),
    "fewer_slices": ("ct", "s6"),
    "dicom_good": ("ct", "s7"),
    # note file (note)
    "empty_note": ("note", "s1"),
    "whitespace_note": ("note", "s2"),
    "non_utf8_note": ("note", "s3"),
    "note_1mb": ("note", "s4"),
    "symlink_loop": ("note", "s5"),  # a link to itself: no file at all
    # series (ehr)
    "series_all_nan": ("ehr", "s1"),
    "series_constant": ("ehr", "s2"),
    "series_single_row": ("ehr", "s3"),
    "series_100k_rows": ("ehr", "s4"),
    "series_unknown_variables": ("ehr", "s5"),
    "decimal_comma_series": ("ehr", "s6"),  # "120,5": not a number
}


def _volume(i: int) -> np.ndarray:
    """A [D, H, W] HU volume that differs per sample (and is not symmetric, so orientation shows)."""
    rng = np.random.default_rng(100 + i)
    d, h, w = np.meshgrid(np.arange(DEPTH), np.arange(SIDE), np.arange(SIDE), indexing="ij")
    return (-800 + 90 * d + 20 * h - 5 * w + rng.normal(0, 30, (DEPTH, SIDE, SIDE))).astype(np.float32)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` grey pixels (no pixel data needed to open it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + _png_chunk(b"IEND", b"")


def _png_zero_image(width: int, height: int) -> bytes:
    """A complete, valid black ``width`` x ``height`` grey PNG (compresses to ~100 KB at 10^8 pixels)."""
    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(comp.compress(row * 1000) for _ in range(height // 1000)) + comp.compress(row * (height % 1000))
    body += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose SOF0 frame header is patched to declare ``width`` x ``height``."""
    pos = data.index(b"\xff\xc0")
    return data[: pos + 5] + struct.pack(">HH", height, width) + data[pos + 9 :]


def grey_image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:32, 0:32]
    return (40 + 4 * x + 2 * y + rng.normal(0, 8, (32, 32))).clip(0, 255).astype(np.uint8)


def _write_image(folder: Path, i: int, case: str | None) -> str:
    g = grey_image(i)
    if case is None:
        Image.fromarray(g, mode="L").save(folder / f"{i}.png")
        return f"img/{i}.png"
    if case == "corrupt_png":
        good = folder / f"{i}.tmp.png"
        Image.fromarray(g, mode="L").save(good)
        raw = bytearray(good.read_bytes())
        good.unlink()
        idat = raw.index(b"IDAT")
        raw[idat + 8 : idat + 24] = b"\xde\xad\xbe\xef" * 4  # compressed pixel data corrupted (CRC fails)
        (folder / f"{i}.png").write_bytes(bytes(raw))
        return f"img/{i}.png"
    if case == "truncated_png":
        good = folder / f"{i}.tmp.png"
        Image.fromarray(g, mode="L").save(good)
        raw = good.read_bytes()
        good.unlink()
        (folder / f"{i}.png").write_bytes(raw[: len(raw) // 2])
        return f"img/{i}.png"
    if case == "png_16bit":
        # The same picture at 16 bits: a correct decoder gives the 8-bit image back (x 257).
        Image.fromarray(g.astype(np.uint16) * 257).save(folder / f"{i}.png")
        return f"img/{i}.png"
    if case == "cmyk_jpeg":
        Image.fromarray(g, mode="L").convert("RGB").convert("CMYK").save(folder / f"{i}.jpg", quality=98)
        return f"img/{i}.jpg"
    if case == "corrupt_jpeg":
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(i).integers(0, 256, 600,
                                                                                                       np.uint8)))
        return f"img/{i}.jpg"
    if case == "truncated_jpeg":
        good = folder / f"{i}.tmp.jpg"
        Image.fromarray(np.tile(g, (4, 4)), mode="L").save(good, quality=95)
        raw = good.read_bytes()
        good.unlink()
        (folder / f"{i}.jpg").write_bytes(raw[: len(raw) // 2])
        return f"img/{i}.jpg"
    if case == "huge_png":
        (folder / f"{i}.png").write_bytes(_png_header_only(100_000, 100_000))  # 10^10 pixels
        return f"img/{i}.png"
    if case == "huge_jpeg":
        good = folder / f"{i}.tmp.jpg"
        Image.fromarray(g, mode="L").save(good)
        raw = good.read_bytes()
        good.unlink()
        (folder / f"{i}.jpg").write_bytes(_jpeg_with_size(raw, 65_000, 65_000))
        return f"img/{i}.jpg"
    if case == "bomb_1_2x_png":
        # Between Pillow's MAX_IMAGE_PIXELS (89.5 M) and twice that: Pillow only warns.
        (folder / f"{i}.png").write_bytes(_png_zero_image(10_000, 10_000))
        return f"img/{i}.png"
    if case == "exif_rotated_jpeg":
        # The picture stored turned 90° counter-clockwise, with orientation 6 ("turn 90° clockwise to
        # display"), as cameras and some scanners write it: a viewer (and the reader) shows ``g``.
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(np.ascontiguousarray(np.rot90(g)), mode="L").save(folder / f"{i}.jpg", quality=95, exif=exif)
        return f"img/{i}.jpg"
    if case == "directory_path":
        (folder / f"{i}.png").mkdir()
        return f"img/{i}.png"
    raise ValueError(case)


# -- DICOM ------------------------------------------------------------------------------------
def _dicom_slice(path: Path, pixels: np.ndarray, z: float, series_uid: str, number: int) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 2.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    frames = pixels if pixels.ndim == 3 else pixels[None]
    if pixels.ndim == 3:
        ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.PixelData = np.ascontiguousarray(frames.astype("<i2")).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    assert pydicom.dcmread(str(path)).pixel_array.shape == pixels.shape


def _write_dicom(folder: Path, vol: np.ndarray, case: str) -> None:
    folder.mkdir(parents=True)
    uid_a, uid_b = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"
    if case == "dicom_multiframe":
        _dicom_slice(folder / "frames.dcm", vol, 0.0, uid_a, 1)
        return
    for k in range(len(vol)):
        if case == "dicom_missing_slice" and k == 3:
            continue
        uid = uid_b if case == "dicom_two_series" and k >= 3 else uid_a
        _dicom_slice(folder / f"slice{k:03d}.dcm", vol[k], 2.0 * k, uid, k + 1)


def _write_volume(folder: Path, i: int, case: str | None) -> str:
    import nibabel as nib

    vol = _volume(i)
    if case is None or case == "truncated_nifti":
        # Canonical storage: voxel axes (x=W, y=H, z=D) with a RAS affine; read_volume gives vol back
        # as [D (S), H (P), W (L)]: x runs R->L (flip), y runs A->P (flip).
        data = np.transpose(vol, (2, 1, 0))[::-1, ::-1, :]
        img = nib.Nifti1Image(np.ascontiguousarray(data), np.diag([1.0, 1.0, 2.0, 1.0]))
        path = folder / f"{i}.nii.gz"
        nib.save(img, str(path))
        if case == "truncated_nifti":
            raw = path.read_bytes()
            path.write_bytes(raw[: len(raw) // 2])
        return f"ct/{i}.nii.gz"
    if case == "noncanonical_nifti":
        # s0's volume stored as [W, D, H] with axes flipped: an affine that is a permutation + flips.
        base = _volume(0)
        canon = np.transpose(base, (2, 1, 0))[::-1, ::-1, :]  # RAS voxel order (x, y, z)
        data = np.transpose(canon, (1, 2, 0))[::-1, :, ::-1]  # stored axes: (-y, z, -x)
        affine = np.zeros((4, 4))
        affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = -1.0, 2.0, -1.0, 1.0
        affine[:3, 3] = [SIDE - 1, SIDE - 1, 0]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(folder / f"{i}.nii.gz"))
        return f"ct/{i}.nii.gz"
    if case == "fewer_slices":
        data = np.transpose(vol[:2], (2, 1, 0))[::-1, ::-1, :]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.diag([1.0, 1.0, 2.0, 1.0])),
                 str(folder / f"{i}.nii.gz"))
        return f"ct/{i}.nii.gz"
    if case.startswith("dicom_"):
        _write_dicom(folder / f"dicom{i}", vol, case)
        return f"ct/dicom{i}"
    raise ValueError(case)


# -- notes and series ---------------------------------------------------------------------------
NOTE_WORDS = ["effusion", "clear", "opacity", "stable", "normal", "heart", "size", "lungs", "no", "acute"]


def _write_note(folder: Path, i: int, y: int, case: str | None) -> str:
    path = folder / f"{i}.txt"
    if case is None:
        path.write_text(("small effusion seen" if y else "lungs clear") + f" study {i}\n", encoding="utf-8")
    elif case == "empty_note":
        path.write_bytes(b"")
    elif case == "whitespace_note":
        path.write_text(" \n\t \n  ", encoding="utf-8")
    elif case == "non_utf8_note":
        path.write_bytes("Befund: Pleuraerguss rechts, Herzgröße normal".encode("latin-1"))
    elif case == "note_1mb":
        rng = np.random.default_rng(i)
        words = rng.choice(NOTE_WORDS, 200_000)
        text = " ".join(words)
        path.write_text(text[: 1024 * 1024], encoding="utf-8")
    elif case == "symlink_loop":
        path.symlink_to(path.name)
    else:
        raise ValueError(case)
    return f"notes/{i}.txt"


def _write_series(folder: Path, i: int, y: int, case: str | None) -> str:
    rng = np.random.default_rng(200 + i)
    steps = 12
    frame = pd.DataFrame(rng.normal(0, 1, (steps, len(SERIES_VARIABLES))) + y, columns=SERIES_VARIABLES)
    if case == "series_all_nan":
        frame[:] = np.nan
    elif case == "series_constant":
        frame[:] = 7.0
    elif case == "series_single_row":
        frame = frame.iloc[:1]
    elif case == "series_100k_rows":
        frame = pd.DataFrame(rng.normal(0, 1, (100_000, len(SERIES_VARIABLES))), columns=SERIES_VARIABLES)
    elif case == "series_unknown_variables":
        frame = frame.rename(columns={"spo2": "mystery_lab"})  # same count, one unknown variable
    elif case == "decimal_comma_series":
        frame["sbp"] = [f"{v:.2f}".replace(".", ",") for v in frame["sbp"]]  # written quoted: "0,53"
    elif case is not None:
        raise ValueError(case)
    frame.insert(0, "time", np.arange(len(frame)))
    frame.to_csv(folder / f"{i}.csv", index=False)
    return f"ts/{i}.csv"


def write_cohort(folder: Path) -> pd.DataFrame:
    """The mostly good cohort under ``folder`` (manifest.csv + files); returns the manifest table."""
    for sub in ("img", "ct", "notes", "ts"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    by_sample: dict[tuple[str, str], str] = {(mod, sid): case for case, (mod, sid) in CASES.items()}
    rows = []
    for i in range(N):
        sid, y = f"s{i}", i % 2
        rows.append({
            "sid": sid, "pid": f"p{i}", "split": SPLITS[i], "outcome": y,
            "image": _write_image(folder / "img", i, by_sample.get(("xray", sid))),
            "ct": _write_volume(folder / "ct", i, by_sample.get(("ct", sid))),
            "note": _write_note(folder / "notes", i, y, by_sample.get(("note", sid))),
            "series": _write_series(folder / "ts", i, y, by_sample.get(("ehr", sid))),
            "age": 40 + i, "bmi": "" if i % 4 == 0 else 20.0 + i / 2,
        })
    write_manifest(folder / "manifest.csv", rows)
    return pd.DataFrame(rows)


def write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


def dataset_config(manifest: str = "cohort/manifest.csv") -> dict:
    return {
        "adapter": "manifest", "manifest": manifest, "id_column": "sid", "patient_column": "pid",
        "split_column": "split", "task": "binary", "labels": ["outcome"],
        "modalities": {
            "xray": {"kind": "image", "column": "image"},
            "ct": {"kind": "volume", "column": "ct"},
            "note": {"kind": "text", "column": "note", "file": True},
            "ehr": {"kind": "timeseries", "column": "series"},
            "vitals": {"kind": "tabular", "columns": ["age", "bmi"]},
        },
    }


#: The one cheap offline expert of each modality kind.
EXPERTS = {"xray": "image_intensity_grid", "ct": "ct_intensity_profile", "note": "text_keywords",
           "ehr": "ts_summary", "vitals": "tabular_raw"}

