"""The retrieval index folder: deterministic rebuilds, identity checks, tamper detection (demo KB, MiniLM)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from extractors.knowledge.index import KnowledgeIndex, RetrievalIndexError, build_index
from extractors.knowledge.kb import ingest
from extractors.knowledge.projection import fit_ridge
from extractors.registry import create_extractor


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag_index")
    ingest("demo", root / "kb.parquet")
    encoder, _ = create_extractor("rag_minilm", {"options": {"index_dir": str(root / "index")}}).index_specs()
    manifest = build_index(root / "kb.parquet", root / "index", encoder)
    return root, encoder, manifest


def test_minilm_index_rebuild_is_byte_identical(demo_index, tmp_path):
    root, encoder, manifest = demo_index
    assert manifest["encoder"]["model_id"] == "sentence-transformers/all-MiniLM-L6-v2" and manifest["dim"] == 384
    assert manifest["projection"] is None
    build_index(root / "kb.parquet", tmp_path / "again", encoder)
    for name in ("index.faiss", "embeddings.npy", "ids.json", "manifest.json"):
        assert (root / "index" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_demo_retrieval_with_rag_minilm(demo_index):
    root, _, _ = demo_index
    ex = create_extractor("rag_minilm", {"options": {"index_dir": str(root / "index")}})
    _, idx = ex.retrieve(["blunting of the costophrenic angle consistent with pleural effusion",
                          "refractory septic shock requiring escalating vasopressors",
                          "enhancing solid renal mass, clear cell histology"])
    titles = [[ex._index.titles[j] for j in row] for row in idx]
    assert titles[0][0] == "Pleural effusion"
    assert titles[1][0] == "Septic shock"
    assert "Renal cell carcinoma" in titles[2][:2]
    emb = ex.embed_batch(["lactate: 4.8; map: 58; heart_rate: 124"])
    assert emb.shape == (1, 384) and np.isfinite(emb).all()


def test_index_for_other_settings_is_refused(demo_index, tmp_path):
    root, _, _ = demo_index
    ex = create_extractor("rag_minilm", {"preprocessing": {"max_seq_length": 128},
                                         "options": {"index_dir": str(root / "index")}})
    with pytest.raises(RetrievalIndexError, match="max_length"):
        ex.load()
    # A MiniLM index cannot serve the MedCPT expert (its encoder identity differs).
    medcpt = create_extractor("rag_medcpt_qwen2", {"options": {"index_dir": str(root / "index")}})
    with pytest.raises(RetrievalIndexError, match="encoder.family"):
        KnowledgeIndex(root / "index").check(medcpt.article_encoder_spec().identity())


def test_tampered_index_is_detected(demo_index, tmp_path):
    import shutil

    root, _, _ = demo_index
    copy = tmp_path / "copy"
    shutil.copytree(root / "index", copy)
    emb = np.load(copy / "embeddings.npy")
    emb[0, 0] += 1.0
    np.save(copy / "embeddings.npy", emb)
    with pytest.raises(RetrievalIndexError, match="embeddings.npy"):
        KnowledgeIndex(copy)
    with pytest.raises(RetrievalIndexError, match="manifest"):
        KnowledgeIndex(tmp_path)
    assert json.loads((root / "index" / "manifest.json").read_text())["kb_hash"]


def test_ridge_projection_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    w = rng.normal(size=(8, 5))
    y = x @ w + 0.5
    proj = fit_ridge(x, y, ridge_lambda=1e-8)
    assert np.allclose(proj.weight, w, atol=1e-4) and np.allclose(proj.bias, 0.5, atol=1e-4)
    assert proj.r2 > 0.999999
    shrunk = fit_ridge(x, y, ridge_lambda=10.0)
    assert np.linalg.norm(shrunk.weight) < np.linalg.norm(proj.weight)
