"""CT volume reading on real scans (../shared/data/ct) and the Appendix A slice indices.

Facts about the shared scans, checked here rather than assumed:
- ``example_ct_sm.nii.gz`` is voxel-for-voxel axial slices 82..111 of ``example_ct.nii.gz``
  (the superior 30 slices), although its affine still has the uncropped origin;
- ``example_ct_dicom/`` is a different acquisition (contrast-enhanced, 0.98 mm in-plane,
  2 mm slice spacing, z -804.5..-766.5 mm) that shares no slices with the NIfTI files, so the
  DICOM/NIfTI agreement is tested by writing the DICOM series as a NIfTI with the geometry of
  its headers and reading both back.
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from extractors.base import InputError
from extractors.ct_slicing import N_SLICES, sample_slice_indices, volume_to_slices
from extractors.inputs import read_volume


@pytest.fixture(scope="module")
def ct(shared_data: Path) -> Path:
    folder = shared_data / "ct"
    if not (folder / "example_ct.nii.gz").is_file() or not (folder / "example_ct_dicom").is_dir():
        pytest.fail(f"real CT scans missing under {folder}")
    return folder


@pytest.fixture(scope="module")
def nifti_volume(ct: Path) -> np.ndarray:
    return read_volume(str(ct / "example_ct.nii.gz"))


@pytest.fixture(scope="module")
def dicom_volume(ct: Path) -> np.ndarray:
    return read_volume(str(ct / "example_ct_dicom"))


def _dicom_files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]


# -- NIfTI -------------------------------------------------------------------------------------
def test_nifti_is_read_axial_first_in_hounsfield_units(nifti_volume: np.ndarray, ct: Path) -> None:
    raw = nib.load(str(ct / "example_ct.nii.gz"))
    assert nib.aff2axcodes(raw.affine) == ("R", "A", "S")
    assert raw.shape == (122, 101, 112)
    # [D, H, W] = [S, P, L]: depth from the z axis, rows from y (flipped), columns from x (flipped).
    assert nifti_volume.shape == (112, 101, 122) and nifti_volume.dtype == np.float32
    data = np.asarray(raw.dataobj, dtype=np.float32)
    np.testing.assert_array_equal(nifti_volume[5], data[::-1, ::-1, 5].T)
    assert -1300 < float(nifti_volume.min()) < -900  # air in HU


def test_small_nifti_is_the_superior_30_slices_of_the_full_scan(nifti_volume, ct: Path) -> None:
    small = read_volume(str(ct / "example_ct_sm.nii.gz"))
    assert small.shape == (30, 101, 122)
    np.testing.assert_array_equal(small, nifti_volume[82:112])


def test_nifti_reading_does_not_depend_on_the_stored_orientation(nifti_volume, ct: Path, tmp_path: Path) -> None:
    raw = nib.load(str(ct / "example_ct.nii.gz"))
    for codes in (("L", "P", "S"), ("S", "R", "A"), ("A", "I", "L")):
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(raw.affine), nib.orientations.axcodes2ornt(codes)
        )
        other = raw.as_reoriented(ornt)
        assert nib.aff2axcodes(other.affine) == codes
        path = tmp_path / f"{''.join(codes)}.nii.gz"
        nib.save(other, str(path))
        np.testing.assert_array_equal(read_volume(str(path)), nifti_volume)


def test_radiological_orientation_on_both_formats(nifti_volume, dicom_volume) -> None:
    """Spine posterior (lower rows), liver on the image's left (patient right), in both readers."""
    for vol in (nifti_volume[105], dicom_volume[10]):
        body = vol > -300
        rows, cols = np.nonzero(body)
        centre_row, centre_col = rows.mean(), cols.mean()
        half = vol.shape[1] // 8
        central = vol[:, int(centre_col) - half : int(centre_col) + half]
        bone_rows = np.nonzero(central > 300)[0]
        assert np.median(bone_rows) > centre_row  # vertebra behind the body centre
        soft = (vol > 30) & (vol < 200)
        left = soft[:, : int(centre_col)].sum()
        right = soft[:, int(centre_col) :].sum()
        assert left > 1.3 * right  # the liver fills the patient's right = image left


# -- DICOM -------------------------------------------------------------------------------------
def test_dicom_slices_sorted_along_normal_with_rescale(dicom_volume, ct: Path) -> None:
    datasets = _dicom_files(ct / "example_ct_dicom")
    assert len(datasets) == 20 and dicom_volume.shape == (20, 512, 512)
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert z != sorted(z)  # file-name order is superior -> inferior; the reader must reorder
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    for k in (0, 7, 19):
        ds = by_z[k]
        assert list(map(float, ds.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0]
        expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(dicom_volume[k], expected)
    assert float(by_z[0].RescaleIntercept) == -1024.0
    assert dicom_volume.min() == -1024.0 and np.median(dicom_volume[:, :40, :40]) < -900


def _write_series(datasets: list[pydicom.Dataset], folder: Path, names: list[str]) -> None:
    folder.mkdir()
    for ds, name in zip(datasets, names, strict=True):
        ds.save_as(str(folder / name), enforce_file_format=True)


def test_dicom_flipped_orientation_shuffled_files_and_slope(dicom_volume, ct: Path, tmp_path: Path) -> None:
    """A copy stored mirrored left-right and top-bottom, with other slope/intercept and shuffled
    file names, reads back as the same HU volume."""
    datasets = _dicom_files(ct / "example_ct_dicom")
    spacing = [float(v) for v in datasets[0].PixelSpacing]  # [row spacing, column spacing]
    for ds in datasets:
        ds.decompress()
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        flipped = hu[::-1, ::-1]
        stored = np.round((flipped + 2048.0) / 2.0).astype(np.uint16)  # slope 2, intercept -2048
        ds.PixelData = stored.tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = 2, -2048
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (ds.Columns - 1) * spacing[1], y + (ds.Rows - 1) * spacing[0], z]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
    rng = np.random.default_rng(0)
    folder = tmp_path / "flipped"
    _write_series(datasets, folder, [f"slice_{k:03d}.dcm" for k in rng.permutation(len(datasets))])
    (folder / "notes.txt").write_text("not a DICOM file")
    volume = read_volume(str(folder))
    # Only the even-HU quantisation of slope 2 separates the two.
    np.testing.assert_allclose(volume, dicom_volume, atol=1.0)


def test_dicom_and_nifti_of_the_same_slices_agree(dicom_volume, ct: Path, tmp_path: Path) -> None:
    """The DICOM series written as NIfTI (geometry from its headers) reads back identically."""
    datasets = sorted(_dicom_files(ct / "example_ct_dicom"), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    first, last = (np.array(ds.ImagePositionPatient, float) for ds in (datasets[0], datasets[-1]))
    row_sp, col_sp = (float(v) for v in datasets[0].PixelSpacing)
    # NIfTI voxel (i = column, j = row, k = slice) -> LPS world, then LPS -> RAS.
    lps = np.eye(4)
    lps[:3, 0] = [col_sp, 0, 0]
    lps[:3, 1] = [0, row_sp, 0]
    lps[:3, 2] = (last - first) / (len(datasets) - 1)
    lps[:3, 3] = first
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    data = np.transpose(hu, (2, 1, 0)).astype(np.int16)  # [column, row, slice]
    path = tmp_path / "from_dicom.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_array_equal(read_volume(str(path)), dicom_volume)


def test_dicom_folder_without_images_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no DICOM"):
        read_volume(str(tmp_path))


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_dicom_truncated_file_is_input_error(ct: Path, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    shutil.copytree(ct / "example_ct_dicom", folder)
    victim = sorted(folder.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:20000])
    with pytest.raises(InputError, match="DICOM"):
        read_volume(str(folder))


# -- arrays ------------------------------------------------------------------------------------
def test_npy_and_npz_layouts_give_identical_volumes(nifti_volume, tmp_path: Path) -> None:
    dhw = nifti_volume[:40]
    np.save(tmp_path / "dhw.npy", dhw)
    np.save(tmp_path / "hwd.npy", np.transpose(dhw, (1, 2, 0)))
    np.savez(tmp_path / "dhw.npz", volume=dhw)
    np.savez_compressed(tmp_path / "hwd.npz", volume=np.transpose(dhw, (1, 2, 0)).astype(np.int16))
    for name, layout in (("dhw.npy", "DHW"), ("hwd.npy", "HWD"), ("dhw.npz", "DHW"), ("hwd.npz", "HWD")):
        vol = read_volume(str(tmp_path / name), layout)
        assert vol.dtype == np.float32
        np.testing.assert_array_equal(vol, dhw, err_msg=name)


def test_wrong_layout_name_and_wrong_shape_are_input_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros((8, 8), np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((4, 8, 8), np.float32))
    with pytest.raises(InputError, match="expected 3 dimensions"):
        read_volume(str(tmp_path / "flat.npy"))
    with pytest.raises(InputError, match="layout"):
        read_volume(str(tmp_path / "cube.npy"), "WHD")


# -- Appendix A, Eq. 5 -------------------------------------------------------------------------
def test_slice_indices_follow_eq5_exactly() -> None:
    for depth in range(1, 700):
        for n in (N_SLICES, 1, 2, 7, 64):
            got = sample_slice_indices(depth, n)
            if n == 1:
                expected = [0]
            else:
                expected = [int(Fraction(depth - 1, n - 1) * i) for i in range(n)]  # exact floor
            assert got.tolist() == expected, (depth, n)
    assert sample_slice_indices(112).tolist()[-1] == 111 and sample_slice_indices(112)[0] == 0


def test_float_formula_would_be_off_somewhere() -> None:
    """Why the indices use integer arithmetic: the float form misses exact integers for some D."""
    misses = [
        d for d in range(2, 3000)
        if not np.array_equal(np.floor((d - 1) / (N_SLICES - 1) * np.arange(N_SLICES)).astype(int),
                              sample_slice_indices(d))
    ]
    assert misses, "float and exact forms agree everywhere; the integer form is then merely equivalent"


def test_volume_to_slices_takes_the_eq5_slices_in_order(nifti_volume) -> None:
    depth = nifti_volume.shape[0]
    labelled = np.broadcast_to(np.linspace(-1000, 1000, depth, dtype=np.float32)[:, None, None], (depth, 16, 16))
    slices = volume_to_slices(np.ascontiguousarray(labelled), size=32)
    assert slices.shape == (N_SLICES, 3, 32, 32)
    expected = (labelled[sample_slice_indices(depth), 0, 0] + 1000) / 2000
    np.testing.assert_allclose(slices[:, 0, 5, 5], expected, atol=1e-5)
    np.testing.assert_array_equal(slices[:, 0], slices[:, 2])
    with pytest.raises(InputError, match="at least 200"):
        volume_to_slices(nifti_volume, min_depth=200)


def test_oversized_npz_refused_from_its_header(tmp_path: Path) -> None:
    """A small .npz whose member declares a huge array is refused before anything is decompressed."""
    import io
    import zipfile

    header = io.BytesIO()
    # 3 GiB
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (768, 1024, 1024)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("volume.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(InputError, match=r"would need 3\.0 GiB \(limit 2\)"):
        read_volume(str(path))
