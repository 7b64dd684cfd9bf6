"""Non-finite embeddings: refused at write time, recorded absent by the jobs, never repaired on read.

Rule: an expert's NaN/inf embedding for a sample makes that sample absent with the reason
"non-finite embedding" (extractors/runner.py for in-process experts, extractors/experts/moirai.py for
the MOIRAI worker's output); ``write_features`` refuses non-finite values for present samples;
``read_features`` refuses a file holding any (written by something else), naming the samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from extractors.base import Extractor
from extractors.experts.moirai import write_worker_features
from extractors.registry import ExpertSpec, create_extractor
from extractors.runner import run_extraction
from medmix.store import META_KEY, FeatureStoreError, read_features, write_features


class _Echo(Extractor):
    """Embeds a number x as [x, 2x]: "nan" / "inf" give a non-finite embedding."""

    spec = ExpertSpec(name="echo_nonfinite_test", kinds=("tabular",), role="general", dim=2)

    def prepare(self, value):
        return float(value)

    def embed_batch(self, batch):
        return np.array([[v, v * 2] for v in batch], np.float32)


def _raw_feature_file(path: Path, ids: list[str], emb: np.ndarray, present: np.ndarray) -> None:
    """A feature file written with pyarrow directly (as another tool might), bypassing the writer."""
    dim = emb.shape[1]
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim, mask=pa.array(~present))
    table = pa.table({"sample_id": pa.array(ids, pa.string()), "present": pa.array(present), "embedding": col})
    meta = {"extractor": "x", "model_id": "m", "revision": "r", "preprocessing": {}, "dim": dim}
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), path)


def test_reader_refuses_nan_and_inf_instead_of_repairing_them(tmp_path: Path) -> None:
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    for bad in (np.nan, np.inf, -np.inf):
        emb_bad = emb.copy()
        emb_bad[1, 2] = bad
        path = tmp_path / f"bad_{bad}.parquet"
        _raw_feature_file(path, ["a", "b", "c"], emb_bad, np.ones(3, bool))
        with pytest.raises(FeatureStoreError, match=r"non-finite embeddings for 1 present sample\(s\) \['b'\]"):
            read_features(path)


def test_nan_in_an_absent_row_is_not_an_error(tmp_path: Path) -> None:
    emb = np.ones((3, 4), np.float32)
    emb[1] = np.nan
    present = np.array([True, False, True])
    _raw_feature_file(tmp_path / "raw.parquet", ["a", "b", "c"], emb, present)
    ff = read_features(tmp_path / "raw.parquet")
    assert ff.present.tolist() == [True, False, True] and (ff.embeddings[1] == 0).all()
    write_features(tmp_path / "w.parquet", ["a", "b", "c"], emb, present, {"extractor": "x"})
    child = pq.read_table(tmp_path / "w.parquet").column("embedding").combine_chunks().values
    assert np.isfinite(child.drop_null().to_numpy()).all()  # nothing non-finite stored, even in absent slots


def test_writer_refuses_inf_for_a_present_sample(tmp_path: Path) -> None:
    emb = np.ones((2, 3), np.float32)
    emb[0, 0] = np.inf
    with pytest.raises(FeatureStoreError, match=r"\['s0'\]"):
        write_features(tmp_path / "f.parquet", ["s0", "s1"], emb, np.ones(2, bool), {})
    assert not (tmp_path / "f.parquet").exists()


def test_extraction_job_records_non_finite_embedding_as_absent(tmp_path: Path) -> None:
    summary = run_extraction(_Echo({"batch_size": 4}), ["s0", "s1", "s2"], ["1", "inf", "3"],
                             str(tmp_path / "o.parquet"), max_failed_fraction=0.5)
    ff = read_features(tmp_path / "o.parquet")
    assert ff.present.tolist() == [True, False, True]
    assert summary["failed_reasons"] == {"non-finite embedding": 1}
    assert ff.metadata["failed_reasons"] == {"non-finite embedding": 1}


def test_moirai_worker_output_with_nan_is_recorded_absent(tmp_path: Path) -> None:
    ext = create_extractor("moirai")
    rows = np.stack([np.full(384, 1.0, np.float32), np.full(384, np.nan, np.float32)])
    np.savez(tmp_path / "emb.npz", sample_ids=np.array(["a", "b"]), embeddings=rows)
    n = write_worker_features(ext, ["a", "b"], ["x.csv", "y.csv"], str(tmp_path / "emb.npz"),
                              str(tmp_path / "f.parquet"))
    ff = read_features(tmp_path / "f.parquet")
    assert n == 1 and ff.present.tolist() == [True, False]
    assert ff.metadata["failed_reasons"] == {"non-finite embedding": 1}
