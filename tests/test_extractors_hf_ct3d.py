"""Native-3D CT experts (Merlin, RadFM): preprocessing on the real example CT, and availability errors.

Merlin's model code comes from ``merlin-vlm`` (the ``volume3d`` / ``dev`` extras): its real path is run
end to end on a random-weight tower. RadFM's visual path is medmix's own re-implementation
(:mod:`extractors.radfm_vision`) loading RadFM's checkpoint layout; it runs end to end on a tiny
random-weight checkpoint saved in that layout and is compared with an independent functional forward
written from RadFM's einops patterns. Both experts' preprocessing (the part that decides what the
network sees) is checked exactly on real data, and a missing model must fail at once with instructions.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from extractors.base import InputError, ModelUnavailableError
from extractors.ct_slicing import window_hu
from extractors.experts.merlin import merlin_preprocess, nifti_spacing_ras, read_ct_ras
from extractors.experts.radfm import radfm_depth, radfm_preprocess
from extractors.inputs import read_volume
from extractors.registry import create_extractor, expert_module, get_spec
from extractors.runner import run_extraction
from medmix.plan.code_closure import closure_files
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
    # Issue 18: an array without a declared spacing is an input error, never assumed isotropic.
    with pytest.raises(InputError, match="declared voxel spacing"):
        create_extractor("merlin").prepare(str(path))
    # At 3 mm in-plane the 40 x 30 in-plane voxels become 79 x 59 at 1.5 mm.
    coarse = create_extractor("merlin", {"preprocessing": {"array_spacing_mm": [3.0, 3.0, 3.0]}}).prepare(str(path))
    inside = (coarse[0, :, :, 80] > 0).sum(axis=0)
    assert inside.max() == 79 and (coarse[0, :, :, 80] > 0).sum(axis=1).max() == 59


def test_radfm_preprocessing_on_real_ct(shared_data: Path) -> None:
    assert [radfm_depth(n) for n in (1, 5, 6, 30, 31, 64, 300)] == [4, 4, 4, 28, 32, 64, 64]
    vol = read_volume(str(shared_data / "ct" / "example_ct_sm.nii.gz"))  # 30 axial slices
    out = radfm_preprocess(vol)
    assert out.shape == (1, 512, 512, 28) and 0.0 <= out.min() and out.max() <= 1.0
    # Nearest-neighbour: every output voxel is one of the windowed input voxels. Intensity as RadFM's
    # training volumes (issue 18): soft-tissue display window W400/L40, then per-volume min-max.
    shown = np.clip(vol, -160.0, 240.0)
    win = (shown - shown.min()) / (shown.max() - shown.min())
    assert np.isin(np.unique(out[0, ::37, ::41, :]), np.unique(win)).all()
    assert out[0, 0, 0, 0] == win[0, 0, 0]


def test_radfm_availability_messages(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="chaoyi-wu/RadFM.*local_dir"):
        create_extractor("radfm").load()
    torch = pytest.importorskip("torch")
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelUnavailableError, match="not a RadFM checkpoint"):
        create_extractor("radfm", {"local_dir": str(tmp_path)}).load()
    assert not get_spec("radfm").trust_remote_code  # no third-party code runs
    assert any(p.endswith("radfm_vision.py") for p in closure_files(expert_module("radfm")))


TINY_RADFM = {"image_size": 64, "frames": 64, "image_patch_size": 16, "frame_patch_size": 4, "dim": 768, "depth": 2,
              "heads": 2, "dim_head": 32, "mlp_dim": 128, "perceiver_depth": 2, "perceiver_heads": 2,
              "perceiver_dim_head": 32, "num_latents": 4, "perceiver_ff_mult": 1}


def _radfm_reference(state: dict, volume, cfg: dict):
    """RadFM's visual forward written functionally from its code's einops patterns (one volume)."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange

    def ln(x, key):
        return F.layer_norm(x, x.shape[-1:], state[key + ".weight"], state[key + ".bias"])

    def lin(x, key, bias=True):
        return F.linear(x, state[key + ".weight"], state.get(key + ".bias") if bias else None)

    v = "embedding_layer.vision_encoder."
    p, pf = cfg["image_patch_size"], cfg["frame_patch_size"]
    x = rearrange(volume, "b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)", p1=p, p2=p, pf=pf)
    x = ln(lin(ln(x, v + "to_patch_embedding.1"), v + "to_patch_embedding.2"), v + "to_patch_embedding.3")
    h, w, d = volume.shape[2] // p, volume.shape[3] // p, volume.shape[4] // pf
    nh, nw, nd = cfg["image_size"] // p, cfg["image_size"] // p, cfg["frames"] // pf
    pos = torch.zeros(h, w, d, cfg["dim"])
    for a in range(h):
        for b in range(w):
            for c in range(d):
                pos[a, b, c] = torch.cat([state[v + "pos_embedding.row_embed.weight"][(a + 1) * (nh // h) - 1],
                                          state[v + "pos_embedding.col_embed.weight"][(b + 1) * (nw // w) - 1],
                                          state[v + "pos_embedding.dep_embed.weight"][(c + 1) * (nd // d) - 1]])
    x = x + rearrange(pos, "h w d c -> 1 (h w d) c")
    for i in range(cfg["depth"]):
        layer = f"{v}transformer.layers.{i}."
        q, k, val = lin(ln(x, layer + "0.norm"), layer + "0.fn.to_qkv", bias=False).chunk(3, dim=-1)
        q, k, val = (rearrange(t, "b n (h d) -> b h n d", h=cfg["heads"]) for t in (q, k, val))
        attn = (torch.matmul(q, k.transpose(-1, -2)) * cfg["dim_head"] ** -0.5).softmax(dim=-1)
        x = lin(rearrange(torch.matmul(attn, val), "b h n d -> b n (h d)"), layer + "0.fn.to_out.0") + x
        hidden = F.gelu(lin(ln(x, layer + "1.norm"), layer + "1.fn.net.0"))
        x = lin(hidden, layer + "1.fn.net.3") + x
    media = rearrange(x, "b v d -> b 1 v d")  # (b T (F v) d) with T = F = 1
    r = "embedding_layer.perceiver."
    latents = state[r + "latents"][None, None]
    for i in range(cfg["perceiver_depth"]):
        layer = f"{r}layers.{i}."
        xm, lat = ln(media, layer + "0.norm_media"), ln(latents, layer + "0.norm_latents")
        q = lin(lat, layer + "0.to_q", bias=False)
        k, val = lin(torch.cat((xm, lat), dim=-2), layer + "0.to_kv", bias=False).chunk(2, dim=-1)
        q, k, val = (rearrange(t, "b t n (h d) -> b h t n d", h=cfg["perceiver_heads"]) for t in (q, k, val))
        sim = torch.einsum("... i d, ... j d -> ... i j", q * cfg["perceiver_dim_head"] ** -0.5, k)
        out = torch.einsum("... i j, ... j d -> ... i d", (sim - sim.amax(-1, keepdim=True)).softmax(-1), val)
        latents = lin(rearrange(out, "b h t n d -> b t n (h d)"), layer + "0.to_out", bias=False) + latents
        ff = lin(F.gelu(lin(ln(latents, layer + "1.0"), layer + "1.1", bias=False)), layer + "1.3", bias=False)
        latents = ff + latents
    return ln(latents, r + "norm")[0, 0].mean(0)  # mean of the latents


def test_radfm_end_to_end_random_weights(shared_data: Path, tmp_path: Path) -> None:
    """Checkpoint in RadFM's layout -> our visual path -> runner -> Parquet, on the real example CT."""
    torch = pytest.importorskip("torch")
    from extractors.radfm_vision import RadFMVision, RadFMVisionConfig

    torch.manual_seed(0)
    source = RadFMVision(RadFMVisionConfig(**TINY_RADFM))
    state = {f"embedding_layer.vision_encoder.{k}": t for k, t in source.vision_encoder.state_dict().items()}
    state.update({f"embedding_layer.perceiver.{k}": t for k, t in source.perceiver.state_dict().items()})
    for key in ("embedding_layer.weight", "embedding_layer.fc.weight", "lang_model.model.embed_tokens.weight"):
        state[key] = torch.randn(8, 8)  # the rest of RadFM's checkpoint: must be skipped
    model_dir = tmp_path / "radfm"
    model_dir.mkdir()
    torch.save(state, model_dir / "pytorch_model.bin")
    (model_dir / "radfm_vision_config.json").write_text(json.dumps(TINY_RADFM))

    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((shared_data / "ct" / "example_ct_sm.nii.gz").read_bytes()[:5000])
    values = [str(shared_data / "ct" / "example_ct_sm.nii.gz"), None, str(truncated),
              str(shared_data / "ct" / "example_ct.nii.gz")]
    ids = ["small", "none", "truncated", "full"]
    settings = {"local_dir": str(model_dir), "preprocessing": {"size": 64}, "device": "cpu"}
    summary = run_extraction(create_extractor("radfm", {**settings, "batch_size": 2}), ids, values,
                             str(tmp_path / "a.parquet"))
    ff = read_features(tmp_path / "a.parquet")
    assert ff.embeddings.shape == (4, 768) and ff.embeddings.dtype == np.float32
    assert ff.present.tolist() == [True, False, False, True] and summary["failed"] == 1
    assert np.isfinite(ff.embeddings).all() and not np.allclose(ff.embeddings[0], ff.embeddings[3])

    # Independent functional forward from the saved tensors (the extractor builds its own network).
    for k, path in ((0, values[0]), (3, values[3])):
        grey = radfm_preprocess(read_volume(path), size=64)
        assert grey.shape[-1] == (28 if k == 0 else 64)
        volume = torch.from_numpy(grey.astype(np.float16).astype(np.float32)).expand(3, -1, -1, -1)[None]
        with torch.no_grad():
            ref = _radfm_reference(state, volume, TINY_RADFM).numpy()
        np.testing.assert_allclose(ff.embeddings[k], ref, atol=2e-4, rtol=1e-4)

    # Batch size 1 == 2; deterministic.
    run_extraction(create_extractor("radfm", {**settings, "batch_size": 1}), ids, values, str(tmp_path / "b.parquet"))
    assert np.array_equal(read_features(tmp_path / "b.parquet").embeddings, ff.embeddings)

    # A checkpoint in torch's legacy (non-zip) format cannot be memory-mapped: read whole instead.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(state, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (legacy / "radfm_vision_config.json").write_text(json.dumps(TINY_RADFM))
    ext = create_extractor("radfm", {**settings, "local_dir": str(legacy)})
    np.testing.assert_array_equal(ext.embed_batch([ext.prepare(values[0])])[0], ff.embeddings[0])


@pytest.mark.slow
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
    run_extraction(create_extractor("merlin", {"local_dir": str(tmp_path), "device": "cpu"}), ids, values,
                   str(tmp_path / "b.parquet"))
    np.testing.assert_array_equal(read_features(tmp_path / "b.parquet").embeddings, ff.embeddings)


def test_native_3d_experts_read_array_layouts(shared_data: Path, tmp_path: Path) -> None:
    """``preprocessing.volume_layout`` lets [H, W, D] arrays give the same volume as the NIfTI."""
    ct = str(shared_data / "ct" / "example_ct_sm.nii.gz")
    dhw = read_volume(ct)
    np.save(tmp_path / "hwd.npy", np.transpose(dhw, (1, 2, 0)))
    ras, _, _ = read_ct_ras(ct)
    ras_from_array, _, source = read_ct_ras(str(tmp_path / "hwd.npy"), (3.0, 1.0, 1.0), layout="HWD")
    np.testing.assert_array_equal(ras_from_array, ras)
    assert source == "preprocessing.array_spacing_mm"  # an array needs a declared spacing (issue 18)
    radfm = create_extractor("radfm", {"preprocessing": {"size": 64, "volume_layout": "HWD"}})
    reference = create_extractor("radfm", {"preprocessing": {"size": 64}})
    np.testing.assert_array_equal(radfm.prepare(str(tmp_path / "hwd.npy")), reference.prepare(ct))
