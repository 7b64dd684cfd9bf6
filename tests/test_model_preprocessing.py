"""Issue 18: every expert sees its input the way its model was trained (fast tests).

- GatorTron: casing from the model config (a vocab.txt-only cased checkpoint keeps case);
- MOIRAI: patch size from the series' frequency (uni2ts ``DefaultPatchSizeConstraints``);
- Merlin: ``.npy``/``.npz`` volumes need a declared spacing (sidecar or dataset setting);
- RadFM: display window + per-volume min-max, as its training volumes.

The long-query rule of the RAG experts is tested in ``test_rag_softprompt.py`` (MedCPT path,
tiny BERT) and ``test_rag_long_queries.py`` (hit rates on the real MedlinePlus KB).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from extractors.base import InputError
from extractors.registry import create_extractor
from extractors.runner import run_extraction
from medmix.store import read_features

torch = pytest.importorskip("torch")


# -- GatorTron casing ---------------------------------------------------------------------------
def _vocab_only_megatron(folder: Path, tokenizer_type: str | None) -> Path:
    """A tiny MegatronBertModel saved like UFNLP/gatortron-base: config.json + weights + vocab.txt only."""
    from transformers import MegatronBertConfig, MegatronBertModel

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Heart", "heart", "Failure", "failure", "with", "EF", "ef",
             "reduced", "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    cfg = MegatronBertConfig(vocab_size=len(vocab), hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                             intermediate_size=32, max_position_embeddings=64)
    if tokenizer_type is not None:
        cfg.tokenizer_type = tokenizer_type  # as in gatortron-base's config.json
    MegatronBertModel(cfg).eval().save_pretrained(folder)
    assert not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists()
    return folder


def test_gatortron_cased_checkpoint_keeps_case(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = _vocab_only_megatron(tmp_path / "cased", "BertWordPieceCase")
    # The fallback the issue describes: AutoTokenizer alone lower-cases this cased checkpoint.
    assert AutoTokenizer.from_pretrained(folder).tokenize("Heart Failure") == ["heart", "failure"]
    ex = create_extractor("gatortron_base", {"local_dir": str(folder), "device": "cpu"})
    assert ex.settings.preprocessing["lowercase"] == "from_config"
    assert ex.tokenizer.tokenize("Heart Failure with reduced EF.") == ["Heart", "Failure", "with", "reduced", "EF", "."]
    vocab = (folder / "vocab.txt").read_text().split("\n")
    windows = ex.prepare("Heart Failure with reduced EF.")
    assert windows == [[2, *[vocab.index(w) for w in ("Heart", "Failure", "with", "reduced", "EF", ".")], 3]]
    # Case reaches the model: "Heart" and "heart" embed differently.
    emb = ex.embed_batch([ex.prepare("Heart Failure"), ex.prepare("heart failure")])
    assert np.abs(emb[0] - emb[1]).max() > 1e-4


def test_gatortron_casing_follows_config_and_setting(tmp_path: Path) -> None:
    lower = _vocab_only_megatron(tmp_path / "lower", "BertWordPieceLowerCase")
    ex = create_extractor("gatortron_base", {"local_dir": str(lower)})
    assert ex.tokenizer.tokenize("Heart Failure") == ["heart", "failure"]
    cased = _vocab_only_megatron(tmp_path / "cased", "BertWordPieceCase")
    forced = create_extractor("gatortron_base", {"local_dir": str(cased), "preprocessing": {"lowercase": True}})
    assert forced.tokenizer.tokenize("Heart Failure") == ["heart", "failure"]
    odd = _vocab_only_megatron(tmp_path / "odd", "SentencePieceTokenizer")
    with pytest.raises(ValueError, match="tokenizer_type"):
        _ = create_extractor("gatortron_base", {"local_dir": str(odd)}).tokenizer


# -- MOIRAI patch size --------------------------------------------------------------------------
def test_moirai_patch_size_from_frequency() -> None:
    from extractors.experts.moirai import PATCH_SIZE_RANGES, resolve_patch_size

    # uni2ts 2.0.0 DefaultPatchSizeConstraints.DEFAULT_RANGES (uni2ts/transform/patch.py).
    assert (PATCH_SIZE_RANGES["H"] == (32, 64) and PATCH_SIZE_RANGES["M"] == (8, 32)
            and PATCH_SIZE_RANGES["D"] == (16, 32))
    assert resolve_patch_size({"frequency": "H", "patch_size": "auto"}) == 32
    assert resolve_patch_size({"frequency": "1h", "patch_size": "auto"}) == 32
    assert resolve_patch_size({"frequency": "15min", "patch_size": "auto"}) == 32
    assert resolve_patch_size({"frequency": "D", "patch_size": "auto"}) == 16
    assert resolve_patch_size({"frequency": "W-SUN", "patch_size": "auto"}) == 16
    assert resolve_patch_size({"frequency": "M", "patch_size": "auto"}) == 8
    assert resolve_patch_size({"frequency": "S", "patch_size": "auto"}) == 64
    assert resolve_patch_size({"frequency": "H", "patch_size": 64}) == 64
    with pytest.raises(ValueError, match="outside MOIRAI's pretraining range 32-64"):
        resolve_patch_size({"frequency": "H", "patch_size": 8})
    assert resolve_patch_size({"frequency": "H", "patch_size": 8, "patch_size_check": False}) == 8
    with pytest.raises(ValueError, match="frequency"):
        resolve_patch_size({"frequency": "fortnightly"})


def test_moirai_expert_uses_hourly_patch_32() -> None:
    ex = create_extractor("moirai", {"device": "cpu"})
    assert ex.settings.preprocessing["frequency"] == "H" and ex.settings.preprocessing["patch_size"] == "auto"
    args = ex.worker_args()
    assert args[args.index("--patch-size") + 1] == "32"
    assert ex.metadata()["patch_size_resolved"] == 32
    daily = create_extractor("moirai", {"preprocessing": {"frequency": "D"}})
    assert daily.metadata()["patch_size_resolved"] == 16


# -- Merlin array spacing -----------------------------------------------------------------------
def _extent(prepared: np.ndarray) -> tuple[int, int, int]:
    """Number of non-padding voxels along x, y, z of a Merlin-prepared [1, X, Y, Z] volume."""
    inside = prepared[0] > 0
    return int(inside.any(axis=(1, 2)).sum()), int(inside.any(axis=(0, 2)).sum()), int(inside.any(axis=(0, 1)).sum())


def test_merlin_array_without_spacing_is_absent_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "v.npy"
    np.save(path, np.full((20, 30, 40), 40.0, np.float32))
    out = tmp_path / "f.parquet"
    ex = create_extractor("merlin")
    ex.load = lambda: None  # no weights needed: prepare decides
    ex.embed_batch = lambda batch: np.zeros((len(batch), 2048), np.float32)
    run_extraction(ex, ["a"], [str(path)], str(out), max_failed_fraction=1.0)  # record it, do not fail the job
    feats = read_features(out)
    assert feats.present.tolist() == [False]
    with pytest.raises(InputError, match=r"v\.npy\.json.*spacing_mm.*array_spacing_mm"):
        create_extractor("merlin").prepare(str(path))


def test_merlin_sidecar_and_dataset_spacing(tmp_path: Path) -> None:
    path = tmp_path / "v.npy"
    np.save(path, np.full((20, 30, 40), 40.0, np.float32))  # [D=z, H=y, W=x]
    # Reference: MONAI Spacingd grid, round((n - 1) * s_in / s_out) + 1 voxels at 1.5 x 1.5 x 3 mm.
    expected = (round(39 * 1.5 / 1.5) + 1, round(29 * 3.0 / 1.5) + 1, round(19 * 6.0 / 3.0) + 1)  # (40, 59, 39)
    dataset = create_extractor("merlin", {"preprocessing": {"array_spacing_mm": [6.0, 3.0, 1.5]}}).prepare(str(path))
    assert _extent(dataset) == expected
    (tmp_path / "v.npy.json").write_text(json.dumps({"spacing_mm": [6.0, 3.0, 1.5]}))
    sidecar = create_extractor("merlin").prepare(str(path))
    assert _extent(sidecar) == expected and np.array_equal(sidecar, dataset)
    # The sidecar (per sample) wins over the dataset setting.
    both = create_extractor("merlin", {"preprocessing": {"array_spacing_mm": [3.0, 3.0, 3.0]}}).prepare(str(path))
    assert np.array_equal(both, sidecar)
    (tmp_path / "v.npy.json").write_text(json.dumps({"spacing_mm": [6.0, -3.0, 1.5]}))
    with pytest.raises(InputError, match="positive"):
        create_extractor("merlin").prepare(str(path))
    with pytest.raises(ValueError, match="preprocessing setting"):
        create_extractor("merlin", {"options": {"array_spacing_mm": [1, 1, 1]}}).prepare(str(path))


# -- RadFM intensity ----------------------------------------------------------------------------
def test_radfm_intensity_display_window_then_volume_minmax() -> None:
    from extractors.experts.radfm import radfm_intensity, radfm_preprocess

    rng = np.random.default_rng(0)
    vol = rng.uniform(-1100, 1500, size=(8, 16, 16)).astype(np.float32)
    vol[0, 0, :4] = [20.0, 60.0, -1000.0, np.nan]
    # Reference: clip to the soft-tissue window W400/L40 = [-160, 240], then (x - min) / (max - min).
    ref = np.clip(np.nan_to_num(vol, nan=-160.0), -160.0, 240.0)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    got = radfm_intensity(vol)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # Soft tissue 20 vs 60 HU: 0.1 of the range (vs 0.02 under the former linear +-1000 HU map).
    assert got[0, 0, 1] - got[0, 0, 0] == pytest.approx(0.1, abs=1e-6)
    legacy = radfm_intensity(vol, "linear_hu")
    assert legacy[0, 0, 1] - legacy[0, 0, 0] == pytest.approx(0.02, abs=1e-6)
    # A volume that does not reach the window's ends is stretched to [0, 1] (per-volume min-max).
    narrow = np.linspace(0, 100, 8 * 4 * 4, dtype=np.float32).reshape(8, 4, 4)
    assert radfm_intensity(narrow).min() == 0.0 and radfm_intensity(narrow).max() == 1.0
    assert not radfm_intensity(np.full((2, 2, 2), 30.0, np.float32)).any()
    with pytest.raises(ValueError, match="intensity"):
        radfm_intensity(vol, "imagenet")
    out = radfm_preprocess(vol, size=16)
    assert np.isin(np.unique(out), np.unique(ref.astype(np.float32))).all()


def test_radfm_expert_records_intensity_rule(tmp_path: Path) -> None:
    from extractors.experts.radfm import radfm_preprocess

    ex = create_extractor("radfm")
    pre = ex.metadata()["preprocessing"]
    assert pre["intensity"] == "display_window_minmax" and pre["display_window_hu"] == [-160.0, 240.0]
    path = tmp_path / "v.npy"
    vol = np.random.default_rng(1).uniform(-300, 300, size=(6, 20, 20)).astype(np.float32)
    np.save(path, vol)
    np.testing.assert_array_equal(ex.prepare(str(path)), radfm_preprocess(vol).astype(np.float16))
    legacy = create_extractor("radfm", {"preprocessing": {"intensity": "linear_hu"}}).prepare(str(path))
    assert not np.array_equal(legacy, ex.prepare(str(path)))
