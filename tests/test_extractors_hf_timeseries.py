"""Time-series foundation-model experts: Chronos on a tiny random-weight T5, MOIRAI's packing and I/O.

Chronos runs end to end (tiny ``T5ForConditionalGeneration`` with Chronos's real tokenizer config,
loaded by ``ChronosPipeline``). MOIRAI's model code (uni2ts) cannot be installed in this environment
(it pins torch<2.5), so its encoder is not exercised here; its input packing, the main-environment
export/import steps of the worker protocol and the "environment missing" error are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import build_chronos

from extractors import moirai_worker
from extractors.base import ModelUnavailableError
from extractors.moirai import export_series, write_worker_features
from extractors.registry import create_extractor
from extractors.runner import run_extraction
from medmix.store import read_features


def _series(folder: Path, lengths=(48, 30, 12), n_var: int = 46) -> list[str]:
    rng = np.random.default_rng(2)
    paths = []
    for k, t in enumerate(lengths):
        frame = pd.DataFrame(rng.normal(50, 10, size=(t, n_var)), columns=[f"v{j}" for j in range(n_var)])
        frame.iloc[rng.random(frame.shape) < 0.3] = np.nan
        frame.iloc[:, min(5, n_var - 1)] = np.nan  # a variable never measured for this patient
        frame.insert(0, "hour", np.arange(t))
        path = folder / f"ts{k}.csv"
        frame.to_csv(path, index=False)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def chronos_dir(tmp_path_factory) -> Path:
    return build_chronos(tmp_path_factory.mktemp("chronos"))


def test_chronos_end_to_end(chronos_dir: Path, tmp_path: Path) -> None:
    from chronos import ChronosPipeline

    paths = _series(tmp_path)
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"hour": [0, 1], "v0": [np.nan, np.nan]}).to_csv(empty, index=False)
    values = [*paths, None, str(empty)]
    ids = [f"s{k}" for k in range(len(values))]
    ext = create_extractor("chronos_small", {"local_dir": str(chronos_dir), "batch_size": 3})
    summary = run_extraction(ext, ids, values, str(tmp_path / "a.parquet"))
    ff = read_features(tmp_path / "a.parquet")
    assert ff.embeddings.shape == (5, 512) and ff.embeddings.dtype == np.float32
    assert ff.present.tolist() == [True, True, True, False, False] and summary["failed"] == 1

    # Independent recomputation with the documented ChronosPipeline.embed API, one variable at a time:
    # mean over observed steps (EOS excluded), then mean over the variables with an observation.
    pipe = ChronosPipeline.from_pretrained(chronos_dir)
    frame = pd.read_csv(paths[1]).drop(columns="hour")
    per_var = []
    for col in frame.columns:
        series = torch.tensor(frame[col].to_numpy(), dtype=torch.float32)
        observed = ~torch.isnan(series)
        if not observed.any():
            continue
        states, _ = pipe.embed(series)
        assert states.shape[1] == len(series) + 1  # + EOS
        per_var.append(states[0, :-1][observed].mean(0).numpy())
    assert len(per_var) == 45  # the never-measured variable is left out
    np.testing.assert_allclose(ff.embeddings[1], np.mean(per_var, axis=0), atol=2e-5, rtol=1e-4)

    # Different lengths batched together (NaN left padding) == each alone; deterministic.
    ext1 = create_extractor("chronos_small", {"local_dir": str(chronos_dir), "batch_size": 1})
    run_extraction(ext1, ids, values, str(tmp_path / "b.parquet"))
    np.testing.assert_allclose(read_features(tmp_path / "b.parquet").embeddings, ff.embeddings, atol=1e-5, rtol=0)


def test_chronos_large_width_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="amazon/chronos-t5-large"):
        create_extractor("chronos_large").load()
    folder = build_chronos(tmp_path / "large", d_model=1024)
    ext = create_extractor("chronos_large", {"local_dir": str(folder)})
    emb = ext.embed_batch([ext.prepare(p) for p in _series(tmp_path, lengths=(20,), n_var=3)])
    assert emb.shape == (1, 1024) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match="d_model"):
        create_extractor("chronos_small", {"local_dir": str(folder)}).load()


# -- MOIRAI ------------------------------------------------------------------------------------
def test_moirai_needs_its_environment() -> None:
    with pytest.raises(ModelUnavailableError, match="workflow/envs/moirai.yaml"):
        create_extractor("moirai").load()


def test_moirai_packing_layout() -> None:
    values = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
    values[0, :4] = np.nan  # sample 0 has 6 real steps (left padding)
    values[1, 7, 2] = np.nan  # one missing measurement
    packed = moirai_worker.pack_series(values, np.array([6, 10]), patch_size=4, max_patch_size=8)
    # 10 steps -> left-padded to 12 -> 3 patches per variate, variate-major: 3 x 3 tokens.
    assert packed["target"].shape == (2, 9, 8) and packed["observed_mask"].shape == (2, 9, 8)
    assert packed["variate_id"][0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert packed["observed_mask"][..., 4:].sum() == 0 and packed["patch_size"].unique().tolist() == [4]
    # Sample 0: padding steps (first 6 of 12) are unobserved; its first patch is pure padding (sample id 0).
    assert packed["sample_id"][0].tolist() == [0, 1, 1] * 3 and packed["sample_id"][1].tolist() == [1] * 9
    assert packed["time_id"][0].tolist() == [0, 0, 1] * 3 and packed["time_id"][1].tolist() == [0, 1, 2] * 3
    # Variate 1, last patch of sample 1 = steps 8..11 of the padded series = original steps 6..9.
    np.testing.assert_array_equal(packed["target"][1, 5, :4].numpy(), values[1, 6:10, 1])
    missing = packed["observed_mask"][1, 8, :4].tolist()  # variate 2, last patch: step 7 missing
    assert missing == [True, False, True, True] and packed["target"][1, 8, 1] == 0.0
    assert not packed["prediction_mask"].any()


def test_moirai_packing_does_not_depend_on_batch_width() -> None:
    rng = np.random.default_rng(0)
    short = rng.normal(size=(13, 4)).astype(np.float32)
    alone = moirai_worker.pack_series(short[None], np.array([13]), 8, 128)
    padded = np.full((1, 29, 4), np.nan, np.float32)
    padded[0, 16:] = short
    wide = moirai_worker.pack_series(padded, np.array([13]), 8, 128)
    keep = wide["sample_id"][0] > 0
    for key in ("target", "observed_mask", "time_id", "variate_id"):
        assert torch.equal(wide[key][0][keep], alone[key][0][alone["sample_id"][0] > 0]), key


def test_moirai_worker_protocol_roundtrip(tmp_path: Path) -> None:
    """Main-env steps around the worker: export prepared series, import its embeddings file."""
    paths = _series(tmp_path, lengths=(24, 16), n_var=5)
    bad = tmp_path / "missing.csv"
    values, ids = [paths[0], None, str(bad), paths[1]], ["a", "b", "c", "d"]
    ext = create_extractor("moirai")
    failed = export_series(ext, ids, values, str(tmp_path / "series.npz"))
    assert list(failed) == ["c"]
    with np.load(tmp_path / "series.npz") as data:
        assert data["sample_ids"].tolist() == ["a", "d"] and data["values"].shape == (2, 24, 5)
        assert data["lengths"].tolist() == [24, 16] and np.isnan(data["values"][1, :8]).all()
    # Stand-in for the worker's output file (the worker itself needs uni2ts): known rows per id.
    rows = np.stack([np.full(384, 1.0, np.float32), np.full(384, 2.0, np.float32)])
    np.savez(tmp_path / "emb.npz", sample_ids=np.array(["d", "a"]), embeddings=rows)
    assert write_worker_features(ext, ids, values, str(tmp_path / "emb.npz"), str(tmp_path / "f.parquet")) == 2
    ff = read_features(tmp_path / "f.parquet")
    assert ff.present.tolist() == [True, False, False, True]
    assert ff.embeddings[0, 0] == 2.0 and ff.embeddings[3, 0] == 1.0 and ff.metadata["extractor"] == "moirai"
    args = ext.worker_args()
    assert args[:2] == ["--model", "Salesforce/moirai-1.0-R-small"] and "--local-files-only" in args
