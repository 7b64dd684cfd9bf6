"""DICOM series written by the tests: compressed transfer syntaxes, modality LUT, header size limits.

Each test writes a tiny synthetic CT series with pydicom, so nothing depends on shared data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from extractors.base import InputError
from extractors.inputs import MAX_VOLUME_BYTES, read_volume

N_SLICES, SIZE = 4, 64


def _slice(stored: np.ndarray, z: float, series_uid: str, *, intercept: float = -1024.0,
           slope: float = 1.0) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = [1.0, 1.0]
    ds.set_pixel_data(stored, "MONOCHROME2", 12)  # 12 bits stored in 16: the usual CT layout
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    return ds


def _series(rng: np.random.Generator) -> tuple[list[Dataset], np.ndarray]:
    """Slices with CT-like stored values (0..4095) and the HU volume they encode."""
    uid = generate_uid()
    stored = rng.integers(0, 4096, size=(N_SLICES, SIZE, SIZE)).astype(np.uint16)
    stored[:, :4, :4] = 0  # air corner, as in a real scan
    datasets = [_slice(stored[k], float(k) * 2.0, uid) for k in range(N_SLICES)]
    return datasets, stored.astype(np.float32) - 1024.0


def _write(datasets: list[Dataset], folder: Path, syntax=None) -> Path:
    folder.mkdir()
    for k, ds in enumerate(datasets):
        ds = ds.copy()
        if syntax is not None:
            ds.compress(syntax)
        ds.save_as(str(folder / f"s{k:02d}.dcm"), enforce_file_format=True)
    return folder


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless, RLELossless], ids=lambda u: u.name)
def test_compressed_series_decodes_to_the_uncompressed_hu_volume(syntax, tmp_path: Path) -> None:
    datasets, hu = _series(np.random.default_rng(0))
    plain = read_volume(str(_write(datasets, tmp_path / "plain")))
    folder = _write(datasets, tmp_path / "compressed", syntax)
    written = pydicom.dcmread(str(next(folder.iterdir())))
    assert written.file_meta.TransferSyntaxUID == syntax and written.file_meta.TransferSyntaxUID.is_compressed
    compressed = read_volume(str(folder))
    # read_volume's axes: superior first, anterior->posterior rows, right->left columns (= stored order here)
    np.testing.assert_array_equal(plain, hu)
    np.testing.assert_array_equal(compressed, plain)
    assert compressed.dtype == np.float32 and compressed.min() == -1024.0


def test_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    """A slice mapped to HU by a Modality LUT Sequence (no rescale) goes through that LUT."""
    rng = np.random.default_rng(1)
    datasets, _ = _series(rng)
    lut = (np.arange(4096) * 3 + 7).astype(np.uint16)  # stored value -> output value, not a linear rescale of 1/-1024
    for ds in datasets:
        del ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.ModalityLUTType = "HU"
        item.LUTData = lut.astype("<u2").tobytes()  # OW
        ds.ModalityLUTSequence = [item]
    folder = _write(datasets, tmp_path / "lut")
    expected = np.stack([ds.pixel_array.astype(np.float32) for ds in datasets])
    expected = lut[expected.astype(np.int64)].astype(np.float32)
    got = read_volume(str(folder))
    assert got.shape == (N_SLICES, SIZE, SIZE)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, np.stack([ds.pixel_array for ds in datasets]).astype(np.float32))


def test_number_of_frames_counts_in_the_size_check(tmp_path: Path) -> None:
    """A header claiming many frames is refused from its header, before any pixel is decoded."""
    datasets, _ = _series(np.random.default_rng(2))
    ds = datasets[0]
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = 5000  # 512 x 512 x 5000 x 4 bytes > MAX_VOLUME_BYTES; one frame would not be
    assert 512 * 512 * 4 < MAX_VOLUME_BYTES < 512 * 512 * 5000 * 4
    folder = tmp_path / "frames"
    folder.mkdir()
    ds.save_as(str(folder / "multi.dcm"), enforce_file_format=True)  # pixel data far smaller than claimed
    with pytest.raises(InputError, match=r"5000 frames"):
        read_volume(str(folder))


def test_multiframe_file_within_limits_is_refused_before_decoding(tmp_path: Path) -> None:
    datasets, _ = _series(np.random.default_rng(3))
    ds = datasets[0]
    ds.NumberOfFrames = 3
    folder = tmp_path / "mf"
    folder.mkdir()
    ds.save_as(str(folder / "mf.dcm"), enforce_file_format=True)
    with pytest.raises(InputError, match=r"mf\.dcm is multi-frame \(3 frames\)"):
        read_volume(str(folder))
