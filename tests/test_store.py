from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medmix.features import assemble
from medmix.store import FeatureStoreError, check_identity, read_features, read_metadata, write_features
from medmix.store.atomic import atomic_path


def _write(path, ids, dim=4, present=None, seed=0, **meta):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(ids), dim)).astype(np.float32)
    present = np.ones(len(ids), bool) if present is None else np.asarray(present)
    write_features(path, ids, emb, present,
                   {"extractor": "x", "model_id": "m", "revision": "r", "preprocessing": {}, **meta})
    return emb, present


def test_round_trip_keeps_values_presence_and_metadata(tmp_path):
    path = tmp_path / "f.parquet"
    emb, present = _write(path, ["a", "b", "c"], present=[True, False, True])
    ff = read_features(path)
    assert ff.sample_ids == ["a", "b", "c"]
    assert ff.embeddings.dtype == np.float32 and ff.embeddings.shape == (3, 4)
    np.testing.assert_array_equal(ff.present, [True, False, True])
    np.testing.assert_allclose(ff.embeddings[[0, 2]], emb[[0, 2]])
    assert (ff.embeddings[1] == 0).all()
    # `present` alone carries absence: the absent row is zeros, not an Arrow null (which pyarrow < 26
    # cannot write to Parquet).
    table = pq.read_table(path)
    assert table.column("embedding").null_count == 0
    assert table.column("present").to_pylist() == [True, False, True]
    assert (np.asarray(table.column("embedding").combine_chunks().values).reshape(3, 4)[1] == 0).all()
    meta = read_metadata(path)
    assert meta["dim"] == 4 and meta["n_present"] == 2 and meta["model_id"] == "m" and "package_version" in meta


def test_write_rejects_duplicates_and_nonfinite(tmp_path):
    with pytest.raises(FeatureStoreError, match="duplicate"):
        _write(tmp_path / "d.parquet", ["a", "a"])
    with pytest.raises(FeatureStoreError, match="non-finite"):
        write_features(tmp_path / "n.parquet", ["a"], np.array([[np.nan, 1.0]], np.float32), np.array([True]), {})
    assert not (tmp_path / "d.parquet").exists() and not (tmp_path / "n.parquet").exists()


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    _write(target, ["a", "b"])
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_reader_aligns_to_cohort_order_and_reports_masks(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    emb_a, _ = _write(a, ["s1", "s2", "s3"], present=[True, True, False])
    emb_b, _ = _write(b, ["s3", "s1", "s2"], dim=6, present=[True, False, True], seed=1)
    bundle = assemble(["s2", "s3", "s1"], {"img": [{"path": a, "role": "biomed"}, {"path": b, "role": "general"}]})
    blk_a, blk_b = bundle.experts["img"]
    np.testing.assert_allclose(blk_a.x[0], emb_a[1])
    np.testing.assert_array_equal(blk_a.mask, [True, False, True])
    np.testing.assert_allclose(blk_b.x[1], emb_b[0])
    np.testing.assert_array_equal(blk_b.mask, [True, True, False])
    np.testing.assert_array_equal(bundle.modality_mask("img"), [True, True, True])


def test_reader_fails_on_misaligned_ids(tmp_path):
    path = tmp_path / "a.parquet"
    _write(path, ["s1", "s2"])
    with pytest.raises(FeatureStoreError, match="do not match the cohort"):
        assemble(["s1", "s2", "s3"], {"m": [{"path": path}]})


def test_reader_fails_on_stale_cache(tmp_path):
    path = tmp_path / "a.parquet"
    _write(path, ["s1"], preprocessing={"size": 224})
    meta = read_metadata(path)
    check_identity(path, meta, {"model_id": "m", "preprocessing": {"size": 224}})
    with pytest.raises(FeatureStoreError, match="preprocessing"):
        check_identity(path, meta, {"preprocessing": {"size": 256}})
    with pytest.raises(FeatureStoreError, match="model_id"):
        assemble(["s1"], {"m": [{"path": path, "expected": {"model_id": "other"}}]})


def test_reader_fails_on_wrong_dim(tmp_path):
    path = tmp_path / "a.parquet"
    _write(path, ["s1", "s2"])
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"medmix"])
    meta["dim"] = 8
    pq.write_table(table.replace_schema_metadata({b"medmix": json.dumps(meta).encode()}), path)
    with pytest.raises(FeatureStoreError, match="width 4"):
        read_features(path)


def test_reader_rejects_foreign_parquet(tmp_path):
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    with pytest.raises(FeatureStoreError, match="no medmix metadata"):
        read_features(path)
    # Indistinguishable from a footer whose metadata entries were lost: moved aside to be rebuilt.
    assert not path.exists() and (tmp_path / "foreign.parquet.corrupt").exists()


def test_written_feature_file_carries_a_verified_checksum(tmp_path):
    path = tmp_path / "a.parquet"
    _write(path, ["s1", "s2"])
    assert b"medmix_checksum" in pq.read_schema(path).metadata
    table = pq.read_table(path)  # the same metadata over other embeddings: caught on read
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8, np.float32)), 4)
    pq.write_table(table.set_column(2, "embedding", emb), path)
    with pytest.raises(FeatureStoreError, match="column 'embedding' do not match their checksum"):
        read_features(path)
    assert (tmp_path / "a.parquet.corrupt").exists()


def test_reader_takes_absence_from_present_only(tmp_path):
    """A file whose absent rows are null entries (as older versions wrote them) reads the same; a null
    embedding on a row marked present is refused, naming the sample."""
    ids, emb = ["a", "b", "c"], np.arange(12, dtype=np.float32).reshape(3, 4)

    def raw(path, present, mask):
        col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 4, mask=pa.array(mask))
        table = pa.table({"sample_id": ids, "present": pa.array(present), "embedding": col})
        meta = {"extractor": "x", "model_id": "m", "revision": "r", "preprocessing": {}, "dim": 4}
        try:
            pq.write_table(table.replace_schema_metadata({b"medmix": json.dumps(meta).encode()}), path)
        except pa.ArrowNotImplementedError:
            pytest.skip(f"pyarrow {pa.__version__} cannot write null fixed-size-list entries to Parquet")

    raw(tmp_path / "old.parquet", [True, False, True], [False, True, False])
    ff = read_features(tmp_path / "old.parquet")
    assert ff.present.tolist() == [True, False, True] and (ff.embeddings[1] == 0).all()
    np.testing.assert_array_equal(ff.embeddings[[0, 2]], emb[[0, 2]])
    raw(tmp_path / "bad.parquet", [True, True, True], [False, True, False])
    with pytest.raises(FeatureStoreError, match=r"null embedding for 1 present sample\(s\) \['b'\]"):
        read_features(tmp_path / "bad.parquet")
