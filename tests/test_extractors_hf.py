"""Foundation-model experts (Table E1) on tiny random-weight models of the same architectures.

Every model is built locally (tests/tiny_models.py), saved like its hub repository and loaded by
the real expert through its normal code path (``local_dir``), then run end to end through
``extractors.runner.run_extraction`` into Parquet and read back with ``medmix.store``. Reference
values are recomputed independently with the underlying library (transformers / open_clip).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import build_biomedclip, build_dinov2, build_dinov3, build_gatortron, build_qwen2

from extractors.base import ModelUnavailableError
from extractors.ct_slicing import volume_to_slices
from extractors.inputs import read_volume
from extractors.registry import create_extractor, expert_module, get_spec, list_experts
from extractors.runner import run_extraction
from extractors.slide_tiling import select_tiles
from medmix.plan.code_closure import closure_files
from medmix.store import read_features

REPO = Path(__file__).resolve().parents[1]
TABLE_E1 = {  # name: (kinds, role, dim, paper name)
    "biomedclip": (("image",), "biomed", 512, "BiomedCLIP"),
    "dinov2_base": (("image",), "general", 768, "DINOv2-B"),
    "dinov3_vitl": (("image",), "teacher", 1024, "DINOv3 ViT-L"),
    "biomedclip_slide": (("slide",), "biomed", 512, "BiomedCLIP"),
    "dinov2_slide": (("slide",), "general", 768, "DINOv2-B"),
    "dinov3_slide": (("slide",), "teacher", 1024, "DINOv3 ViT-L"),
    "gatortron_base": (("text",), "biomed", 1024, "GatorTron-B"),
    "qwen2_05b": (("text",), "general", 896, "Qwen2-0.5B"),
    "qwen2_7b": (("text",), "teacher", 3584, "Qwen2-7B"),
    "chronos_small": (("timeseries",), "general", 512, "Chronos-S"),
    "chronos_large": (("timeseries",), "teacher", 1024, "Chronos-L"),
    "moirai": (("timeseries",), "biomed", 384, "MOIRAI"),
    "dinov2_ct25d": (("volume",), "general", 768, "DINOv2-B"),
    "merlin": (("volume",), "biomed", 2048, "Merlin"),
    "radfm": (("volume",), "teacher", 768, "RadFM"),
}
MY_MODULES = ["experts.biomedclip", "experts.dinov2", "experts.dinov3", "slide_tiling", "experts.gatortron",
              "experts.qwen2", "experts.chronos", "experts.moirai", "moirai_worker", "experts.merlin", "experts.radfm",
              "hf_common", "hf_vision", "hf_text", "ts_foundation"]
NOTES = [
    "The patient has no acute cardiopulmonary process.",
    "Heart size is normal. Lungs are clear. " * 25,  # several GatorTron windows with the test window size
    "Small left pleural effusion with basilar atelectasis.",
    "Renal mass, enhancing lesion of the left kidney; follow up CT.",
]


def _extract(name: str, values: list, out: Path, **settings):
    extractor = create_extractor(name, settings)
    ids = [f"s{k}" for k in range(len(values))]
    summary = run_extraction(extractor, ids, values, str(out))
    return read_features(out), summary, extractor


def _images(folder: Path, n: int = 4) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for k in range(n):
        path = folder / f"img{k}.png"
        Image.fromarray((rng.random((180 + 40 * k, 240, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


# -- registry ----------------------------------------------------------------------------------
def test_table_e1_experts_registered_with_real_ids() -> None:
    known = set(list_experts())
    for name, (kinds, role, dim, paper) in TABLE_E1.items():
        assert name in known, name
        spec = get_spec(name)
        assert (spec.kinds, spec.role, spec.dim, spec.paper_name) == (kinds, role, dim, paper), name
        assert spec.hub_id and "/" in spec.hub_id and not spec.offline and spec.gpu, name
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision) or spec.revision == "main", name
        assert spec.preprocessing, name
    assert get_spec("moirai").environment == "moirai"
    assert not any(get_spec(n).trust_remote_code for n in TABLE_E1)  # MAIRA-2 (a RAG bridge) is the only one
    # The slide experts reuse the image experts' classes (their sources are rule inputs).
    assert str(REPO / "extractors" / "experts" / "dinov2.py") in closure_files(expert_module("dinov2_slide"))


def test_expert_modules_import_no_heavy_library() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {MY_MODULES!r}: importlib.import_module('extractors.' + m)\n"
        "print(sorted(k for k in ('torch', 'transformers', 'open_clip', 'chronos', 'timm') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize(
    ("name", "hint"),
    [("dinov2_base", "facebook/dinov2-base"), ("dinov3_vitl", "gated"), ("biomedclip", "BiomedCLIP-PubMedBERT"),
     ("gatortron_base", "UFNLP/gatortron-base"), ("qwen2_05b", "Qwen/Qwen2-0.5B"), ("qwen2_7b", "Qwen/Qwen2-7B"),
     ("dinov2_slide", "facebook/dinov2-base"), ("dinov2_ct25d", "facebook/dinov2-base")],
)
def test_missing_model_fails_at_once_naming_the_model(name: str, hint: str) -> None:
    extractor = create_extractor(name)  # no local_dir, offline, nothing in the HF cache
    with pytest.raises(ModelUnavailableError) as err:
        extractor.load()
    message = str(err.value)
    assert hint in message and get_spec(name).hub_id in message
    assert "local_dir" in message and "HF_HOME" in message


def test_missing_local_dir_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        create_extractor("dinov2_base", {"local_dir": str(tmp_path / "nope")}).load()


# -- images ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory) -> Path:
    return build_dinov2(tmp_path_factory.mktemp("dinov2"))


def _dinov2_reference(folder: Path, pixels: np.ndarray) -> np.ndarray:
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()


def test_dinov2_end_to_end(dinov2_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    paths = _images(tmp_path)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not a png")
    values = [*paths, None, str(bad)]
    ff, summary, _ = _extract("dinov2_base", values, tmp_path / "a.parquet", local_dir=str(dinov2_dir), batch_size=3)
    assert ff.embeddings.shape == (6, 768) and ff.embeddings.dtype == np.float32
    assert ff.present.tolist() == [True] * 4 + [False, False]
    assert summary["missing"] == 1 and summary["failed"] == 1
    assert ff.metadata["model_id"] == "facebook/dinov2-base" and ff.metadata["extractor"] == "dinov2_base"
    # CLS of the model-card preprocessed image, recomputed with transformers directly.
    processor = AutoImageProcessor.from_pretrained(dinov2_dir)
    pixels = np.stack([processor(images=Image.open(p).convert("RGB"), return_tensors="np")["pixel_values"][0]
                       for p in paths]).astype(np.float32)
    assert pixels.shape[1:] == (3, 224, 224)
    np.testing.assert_allclose(ff.embeddings[:4], _dinov2_reference(dinov2_dir, pixels), atol=2e-5, rtol=1e-4)
    # Deterministic and batch-size invariant.
    again, _, _ = _extract("dinov2_base", values, tmp_path / "b.parquet", local_dir=str(dinov2_dir), batch_size=1)
    np.testing.assert_allclose(again.embeddings, ff.embeddings, atol=1e-5, rtol=0)
    twice, _, _ = _extract("dinov2_base", values, tmp_path / "c.parquet", local_dir=str(dinov2_dir), batch_size=1)
    np.testing.assert_array_equal(twice.embeddings, again.embeddings)


def test_dinov3_end_to_end(tmp_path: Path) -> None:
    from transformers import DINOv3ViTModel

    folder = build_dinov3(tmp_path / "dinov3")
    paths = _images(tmp_path, 3)
    ff, _, ext = _extract("dinov3_vitl", [*paths, None], tmp_path / "a.parquet", local_dir=str(folder), batch_size=2)
    assert ff.embeddings.shape == (4, 1024) and ff.present.tolist() == [True, True, True, False]
    pixels = np.stack([ext.preprocess_image(Image.open(p).convert("RGB")) for p in paths])
    assert pixels.shape[1:] == (3, 224, 224)  # processor: plain 224x224 resize
    model = DINOv3ViTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(ff.embeddings[:3], ref, atol=2e-5, rtol=1e-4)


def test_biomedclip_end_to_end(tmp_path: Path) -> None:
    import open_clip

    folder = build_biomedclip(tmp_path / "biomedclip")
    paths = _images(tmp_path, 3)
    ff, _, ext = _extract("biomedclip", [*paths, None], tmp_path / "a.parquet", local_dir=str(folder), batch_size=2)
    assert ff.embeddings.shape == (4, 512) and ff.present.tolist() == [True, True, True, False]
    # open_clip's own loader and transform give the same embedding (encode_image, not normalised).
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    images = [Image.open(p).convert("RGB") for p in paths]
    ours = np.stack([ext.preprocess_image(im) for im in images])
    theirs = torch.stack([preprocess(im) for im in images])
    np.testing.assert_array_equal(ours, theirs.numpy())
    with torch.no_grad():
        ref = model.eval().encode_image(theirs).numpy()
    np.testing.assert_allclose(ff.embeddings[:3], ref, atol=2e-5, rtol=1e-4)
    assert not np.allclose(np.linalg.norm(ref, axis=1), 1.0)


# -- slides ------------------------------------------------------------------------------------
def _slide(path: Path, tissue_boxes: list[tuple[int, int, int, int]], size=(700, 500), seed=0) -> str:
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), 245, np.uint8)  # white background
    for x0, y0, x1, y1 in tissue_boxes:
        patch = np.stack([rng.integers(120, 200, (y1 - y0, x1 - x0)), rng.integers(40, 110, (y1 - y0, x1 - x0)),
                          rng.integers(110, 190, (y1 - y0, x1 - x0))], axis=-1)
        arr[y0:y1, x0:x1] = patch.astype(np.uint8)  # pink/purple stain
    Image.fromarray(arr).save(path)
    return str(path)


def test_tile_selection_rule() -> None:
    pre = dict(get_spec("dinov2_slide").preprocessing)
    rgb = np.full((500, 700, 3), 245, np.uint8)
    rgb[0:224, 224:448] = (150, 60, 150)  # exactly grid tile (row 0, col 1)
    rgb[224:300, 0:224] = (150, 60, 150)  # 76/224 = 34% of tile (1, 0)
    rgb[224:260, 448:672] = (150, 60, 150)  # 16% of tile (1, 2): background
    assert select_tiles(rgb, pre) == ((224, 0, 224), (0, 224, 224))
    assert select_tiles(rgb, {**pre, "max_tiles": 1}) == ((224, 0, 224),)
    assert select_tiles(np.full((500, 700, 3), 245, np.uint8), pre) == ()
    assert select_tiles(rgb[:100, :100], pre) == ((0, 0, -1),)  # smaller than a tile: whole image


def test_dinov2_slide_reuses_image_expert(dinov2_dir: Path, tmp_path: Path) -> None:
    slides = [_slide(tmp_path / "s0.png", [(0, 0, 448, 224)]),
              _slide(tmp_path / "s1.png", [(224, 224, 672, 448)], seed=1),
              _slide(tmp_path / "blank.png", [])]
    ff, summary, ext = _extract("dinov2_slide", [*slides, None], tmp_path / "a.parquet", local_dir=str(dinov2_dir))
    assert ff.embeddings.shape == (4, 768) and ff.present.tolist() == [True, True, False, False]
    assert summary["failed"] == 1 and "tissue" in next(iter(ff.metadata["failed_reasons"]))
    # Slide embedding = mean of the dinov2_base embeddings of its two tissue tiles.
    image = Image.open(slides[0]).convert("RGB")
    tiles = [image.crop((0, 0, 224, 224)), image.crop((224, 0, 448, 224))]
    single = create_extractor("dinov2_base", {"local_dir": str(dinov2_dir)})
    tile_emb = single.encode_pixels(np.stack([single.preprocess_image(t) for t in tiles]))
    np.testing.assert_allclose(ff.embeddings[0], tile_emb.mean(axis=0), atol=2e-5, rtol=1e-4)
    assert ff.metadata["preprocessing"]["tile_size"] == 224 and ext.prepare(slides[1]).boxes == (
        (224, 224, 224), (448, 224, 224))


# -- CT, Appendix A ------------------------------------------------------------------------------
def test_dinov2_ct25d_appendix_a(dinov2_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    ct = str(shared_data / "ct" / "example_ct_sm.nii.gz")
    ff, _, ext = _extract("dinov2_ct25d", [ct, None], tmp_path / "a.parquet", local_dir=str(dinov2_dir), batch_size=16)
    assert ff.embeddings.shape == (2, 768) and ff.present.tolist() == [True, False]
    # Independent recomputation: 48 slices (Eq. 5) -> DINOv2 mean/std -> CLS per slice -> mean.
    slices = volume_to_slices(read_volume(ct), n=48, size=224)
    assert slices.shape == (48, 3, 224, 224)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    ref = _dinov2_reference(dinov2_dir, ((slices - mean) / std).astype(np.float32)).mean(axis=0)
    np.testing.assert_allclose(ff.embeddings[0], ref, atol=2e-5, rtol=1e-4)
    assert (ff.metadata["preprocessing"]["n_slices"] == 48
            and ext.settings.preprocessing["hu_range"] == [-1000.0, 1000.0])


# -- text --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gatortron_dir(tmp_path_factory) -> Path:
    return build_gatortron(tmp_path_factory.mktemp("gatortron"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_qwen2(tmp_path_factory.mktemp("qwen2"))


def _manual_mean(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return hidden.mean(0).numpy()


def test_gatortron_windows_and_mean_pooling(gatortron_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, MegatronBertModel

    small = {"window_tokens": 30, "stride": 20, "max_windows": 32}
    settings = {"local_dir": str(gatortron_dir), "preprocessing": small}
    values = [*NOTES, None, "   "]
    ff, summary, ext = _extract("gatortron_base", values, tmp_path / "a.parquet", batch_size=2, **settings)
    assert ff.embeddings.shape == (6, 1024) and ff.present.tolist() == [True] * 4 + [False, False]
    assert summary["failed"] == 1 and summary["missing"] == 1
    tok = AutoTokenizer.from_pretrained(gatortron_dir)
    model = MegatronBertModel.from_pretrained(gatortron_dir).eval()
    ids = tok(NOTES[1], add_special_tokens=False)["input_ids"]
    windows = ext.prepare(NOTES[1])
    # Windows of <= 30 pieces every 20, the last ending at the note's end, each [CLS] ... [SEP].
    assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id and len(w) <= 32 for w in windows)
    starts = [*range(0, len(ids) - 30 + 1, 20)]
    starts = starts + ([len(ids) - 30] if starts[-1] + 30 < len(ids) else [])
    assert [w[1:-1] for w in windows] == [ids[s : s + 30] for s in starts]
    # Token-weighted mean over windows of the per-window token means (== mean over all window tokens).
    sums = sum(_manual_mean(model, w) * len(w) for w in windows)
    np.testing.assert_allclose(ff.embeddings[1], sums / sum(len(w) for w in windows), atol=2e-5, rtol=1e-4)
    # A short note is one [CLS] note [SEP] window; mean pooling, not the CLS vector.
    short = [tok.cls_token_id, *tok(NOTES[0], add_special_tokens=False)["input_ids"], tok.sep_token_id]
    np.testing.assert_allclose(ff.embeddings[0], _manual_mean(model, short), atol=2e-5, rtol=1e-4)
    # Padding-independent: a note alone equals the note batched with a much longer one.
    alone, _, _ = _extract("gatortron_base", [NOTES[2]], tmp_path / "b.parquet", batch_size=1, **settings)
    np.testing.assert_allclose(alone.embeddings[0], ff.embeddings[2], atol=1e-5, rtol=0)
    # Default preprocessing: 510-piece windows.
    default = create_extractor("gatortron_base", {"local_dir": str(gatortron_dir)})
    assert [len(w) for w in default.prepare("lungs are clear . " * 300)] == [512, 512, 512]


def test_qwen2_mean_pooling_ignores_padding(qwen_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    values = [*NOTES, None]
    ff, _, _ = _extract("qwen2_05b", values, tmp_path / "a.parquet", local_dir=str(qwen_dir), batch_size=4)
    assert ff.embeddings.shape == (5, 896) and ff.embeddings.dtype == np.float32
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    model = AutoModel.from_pretrained(qwen_dir).eval()
    for k in (0, 1, 3):
        ids = tok(NOTES[k], add_special_tokens=False)["input_ids"]
        np.testing.assert_allclose(ff.embeddings[k], _manual_mean(model, ids), atol=2e-5, rtol=1e-4)
    alone, _, _ = _extract("qwen2_05b", [NOTES[0]], tmp_path / "b.parquet", local_dir=str(qwen_dir), batch_size=4)
    np.testing.assert_allclose(alone.embeddings[0], ff.embeddings[0], atol=1e-5, rtol=0)
    one_by_one, _, _ = _extract("qwen2_05b", values, tmp_path / "c.parquet", local_dir=str(qwen_dir), batch_size=1)
    np.testing.assert_allclose(one_by_one.embeddings, ff.embeddings, atol=1e-5, rtol=0)


def test_qwen2_7b_teacher_width(qwen_dir: Path, tmp_path: Path) -> None:
    folder = build_qwen2(tmp_path / "qwen7b", hidden=3584, heads=28, layers=1)
    ff, _, ext = _extract("qwen2_7b", NOTES[:2], tmp_path / "a.parquet", local_dir=str(folder), batch_size=2)
    assert ff.embeddings.shape == (2, 3584) and ff.present.all() and np.isfinite(ff.embeddings).all()
    assert ext.model_dtype() is None  # float32 on CPU; bf16 weights only on CUDA
    with pytest.raises(ValueError, match="hidden size"):
        create_extractor("qwen2_7b", {"local_dir": str(qwen_dir)}).load()


def test_unpinned_revision_warns(caplog: pytest.LogCaptureFixture, tmp_path) -> None:
    ext = create_extractor("chronos_large")  # revision "main": no verifiable sha offline
    with caplog.at_level("WARNING", logger="medmix.extract"):
        assert ext.hub_revision("amazon/chronos-t5-large") == "main"
    assert "not a pinned commit" in caplog.text and "experts.settings.chronos_large.revision" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medmix.extract"):
        ext.hub_revision("amazon/chronos-t5-large")  # e.g. the processor, then the model: warned once
    assert "not a pinned commit" not in caplog.text
    pinned = create_extractor("chronos_large", {"revision": "a" * 40})
    with caplog.at_level("WARNING", logger="medmix.extract"):
        assert pinned.hub_revision("amazon/chronos-t5-large") == "a" * 40
        assert pinned.hub_revision(str(tmp_path)) is None  # a local folder has no revision
    assert "not a pinned commit" not in caplog.text


def test_incomplete_checkpoint_is_refused(tmp_path) -> None:
    """A checkpoint missing encoder tensors must not run with randomly initialised weights."""
    from safetensors.torch import load_file, save_file

    folder = build_dinov2(tmp_path / "dinov2")
    tensors = load_file(folder / "model.safetensors")
    dropped = [k for k in tensors if "encoder.layer.1." in k]
    save_file({k: v for k, v in tensors.items() if k not in dropped}, folder / "model.safetensors")
    with pytest.raises(ModelUnavailableError, match=rf"lacks {len(dropped)} of the model's tensors"):
        create_extractor("dinov2_base", {"local_dir": str(folder)}).load()
