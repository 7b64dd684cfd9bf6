"""Native-3D CT experts (Merlin, RadFM): preprocessing on the real example CT, and availability errors.

Merlin's model code comes from ``merlin-vlm`` (the ``volume3d`` / ``dev`` extras): its real path is run
end to end on a random-weight tower. RadFM is a GitHub repository, not a package, so its network is
not run here. Both experts' preprocessing (the part that decides what the network sees) is checked
exactly on real data, and a missing model / package / code folder must fail at once with instructions.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from extractors.base import ModelUnavailableError
from extractors.ct_slicing import window_hu
from extractors.inputs import read_volume
from extractors.merlin import merlin_preprocess, nifti_spacing_ras, read_ct_ras
from extractors.radfm import radfm_depth, radfm_preprocess
from extractors.registry import create_extractor
from extractors.runner import run_extraction
from medmix.store import read_features


def test_merlin_preprocessing_on_real_ct(shared_data: Path) -> None:
    ct = str(shared_data / "ct" / "example_ct.nii.gz")  # 122 x 101 x 112 voxels at 3 mm, RAS
    vol, spacing, source = read_ct_ras(ct)
    assert vol.shape == (122, 101, 112) and spacing == (3.0, 3.0, 3.0) and source == "nifti"
    np.testing.assert_array_equal(vol, np.asarray(nib.load(ct).get_fdata(dtype=np.float32)))
    out = merlin_preprocess(vol, spacing)
    assert out.shape == (1, 224, 224, 160) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # 1.5 mm in x/y: 122 -> 243 voxels, centre-cropped from 9; 101 -> 201, padded 11 before / 12 after;
    # z stays at 3 mm (112 slices), padded 24 before / 24 after with 0 (= -1000 HU after scaling).
    assert (out[0, :, :11] == 0).all() and (out[0, :, 212:] == 0).all()
    assert (out[0, :, :, :24] == 0).all() and (out[0, :, :, 136:] == 0).all()
    expected = window_hu(vol)  # where the new grid hits an old voxel centre, the value is exact
    for x, y, z in [(51, 61, 70), (121, 111, 24), (201, 171, 135), (1, 11, 90)]:
        xr, yr = x + 9, y - 11
        assert xr % 2 == 0 and yr % 2 == 0
        assert out[0, x, y, z] == pytest.approx(expected[xr // 2, yr // 2, z - 24], abs=1e-6)
    # Between two old voxels: the trilinear midpoint.
    mid = (expected[30, 25, 40] + expected[31, 25, 40]) / 2
    assert out[0, 61 - 9 + 0, 50 + 11, 64] == pytest.approx(mid, abs=1e-5)


def test_nifti_spacing_follows_ras_axes(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    affine = np.array([[0, 0, -2.0, 0], [0.5, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])  # axes stored as (A, S, L)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    assert nifti_spacing_ras(str(path)) == (2.0, 0.5, 3.0)
    vol, spacing, _ = read_ct_ras(str(path))
    assert vol.shape == (6, 4, 5) and spacing == (2.0, 0.5, 3.0)


def test_merlin_reads_dicom_series_in_ras(shared_data: Path) -> None:
    folder = str(shared_data / "ct" / "example_ct_dicom")
    vol, spacing, source = read_ct_ras(folder)
    assert source == "dicom" and vol.shape == (512, 512, 20)
    assert spacing[0] == pytest.approx(0.9765625) and spacing[1] == pytest.approx(0.9765625) and spacing[2] > 0
    raw = read_volume(folder)  # [slice, row, column] (LPS)
    np.testing.assert_array_equal(vol[0, 0, 0], raw[0, -1, -1])  # x = left->right flipped, y = A<-P flipped


def test_merlin_expert_prepare_and_availability(shared_data: Path, tmp_path: Path) -> None:
    ext = create_extractor("merlin")
    prepared = ext.prepare(str(shared_data / "ct" / "example_ct_sm.nii.gz"))
    assert prepared.shape == (1, 224, 224, 160) and prepared.dtype == np.float16
    with pytest.raises(ModelUnavailableError, match="stanfordmimi/Merlin"):
        ext.load()  # checkpoint not in the Hugging Face cache
    (tmp_path / ext.settings.preprocessing["checkpoint"]).write_bytes(b"")
    try:
        import merlin  # noqa: F401
    except ImportError:
        with pytest.raises(ModelUnavailableError, match="merlin-vlm"):
            create_extractor("merlin", {"local_dir": str(tmp_path)}).load()


def test_merlin_array_spacing_option(tmp_path: Path) -> None:
    path = tmp_path / "v.npy"
    np.save(path, np.full((20, 30, 40), 40.0, np.float32))  # [D, H, W]
    default = create_extractor("merlin").prepare(str(path))
    assert default.shape == (1, 224, 224, 160)
    assert create_extractor("merlin").metadata()["array_spacing"] == "target spacing"
    # At 3 mm in-plane the 40 x 30 in-plane voxels become 79 x 59 at 1.5 mm.
    coarse = create_extractor("merlin", {"options": {"array_spacing_mm": [3.0, 3.0, 3.0]}}).prepare(str(path))
    inside = (coarse[0, :, :, 80] > 0).sum(axis=0)
    assert inside.max() == 79 and (coarse[0, :, :, 80] > 0).sum(axis=1).max() == 59


def test_radfm_preprocessing_on_real_ct(shared_data: Path) -> None:
    assert [radfm_depth(n) for n in (1, 5, 6, 30, 31, 64, 300)] == [4, 4, 4, 28, 32, 64, 64]
    vol = read_volume(str(shared_data / "ct" / "example_ct_sm.nii.gz"))  # 30 axial slices
    out = radfm_preprocess(vol)
    assert out.shape == (1, 512, 512, 28) and 0.0 <= out.min() and out.max() <= 1.0
    # Nearest-neighbour: every output voxel is one of the windowed input voxels.
    win = window_hu(vol)
    assert np.isin(np.unique(out[0, ::37, ::41, :]), np.unique(win)).all()
    assert out[0, 0, 0, 0] == win[0, 0, 0]


def test_radfm_availability_messages(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="chaoyi-wu/RadFM.*local_dir"):
        create_extractor("radfm").load()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelUnavailableError, match="code_dir"):
        create_extractor("radfm", {"local_dir": str(tmp_path)}).load()
    code = tmp_path / "RadFM"
    code.mkdir()
    (code / "vit_3d.py").write_text("")
    with pytest.raises(ModelUnavailableError, match="allow_remote_code"):
        create_extractor("radfm", {"local_dir": str(tmp_path), "options": {"code_dir": str(code)}}).load()


def test_merlin_end_to_end_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``merlin`` path (checkpoint file -> I3ResNet -> runner -> Parquet) on a random-weight tower.

    The tower is built with merlin-vlm's own ``ImageEncoder`` (ImageNet weights switched off: no
    network here) and saved in the released checkpoint's layout (``encode_image.i3_resnet.*`` plus
    non-image tensors the loader must skip). The extractor builds its own, differently initialised
    network, so its output only matches the reference forward if the checkpoint really was loaded.
    """
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    build = pytest.importorskip("merlin.models.build")  # merlin-vlm (the `volume3d` / `dev` extras)
    resnet152 = torchvision.models.resnet152
    monkeypatch.setattr(build.torchvision.models, "resnet152", lambda pretrained=False, **kw: resnet152(weights=None))
    torch.manual_seed(0)
    encoder = build.ImageEncoder(ImageEmbedding=True).eval()
    monkeypatch.undo()
    ext = create_extractor("merlin", {"local_dir": str(tmp_path), "device": "cpu"})
    state = {f"encode_image.{k}": v for k, v in encoder.state_dict().items()}
    state["logit_scale"] = torch.ones([])
    state["encode_text.linear_layer.weight"] = torch.zeros(512, 768)
    torch.save(state, tmp_path / ext.settings.preprocessing["checkpoint"])

    ct = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "example_ct_sm.nii.gz")
    ids, values = ["ct", "absent"], [ct, None]
    run_extraction(ext, ids, values, str(tmp_path / "a.parquet"))
    ff = read_features(tmp_path / "a.parquet")
    assert ff.sample_ids == ids and ff.embeddings.shape == (2, ext.spec.dim) == (2, 2048)
    assert ff.embeddings.dtype == np.float32 and np.isfinite(ff.embeddings).all()
    assert ff.present.tolist() == [True, False] and not (ff.embeddings[1] != 0).any()
    assert (ff.embeddings[0] != 0).any()

    # Reference: merlin-vlm's ImageEmbedding output of the saved tower on the extractor's own input.
    x = torch.from_numpy(ext.prepare(ct).astype(np.float32))[None]  # [1, 1, 224, 224, 160]
    with torch.inference_mode():
        ref = encoder(x)
    assert tuple(ref.shape) == (1, 1, 2048)
    ref = ref.reshape(-1).numpy()
    np.testing.assert_allclose(ff.embeddings[0], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))

    # Deterministic: a fresh extractor loading the same checkpoint writes the same features.
    run_extraction(create_extractor("merlin", {"local_dir": str(tmp_path), "device": "cpu"}), ids, values, str(tmp_path / "b.parquet"))
    np.testing.assert_array_equal(read_features(tmp_path / "b.parquet").embeddings, ff.embeddings)
