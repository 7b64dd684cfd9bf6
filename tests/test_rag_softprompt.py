"""The MedCPT -> projection -> Qwen2 soft-prompt path end to end, with tiny random models.

Tiny BERT towers (MedCPT-like) and a tiny Qwen2 (hidden size 896, one layer) are built with
random weights in a temp folder and loaded through the experts' real code paths
(``local_dir``); the demo knowledge base is indexed by the same code the ``rag_index`` rule
runs, and extraction goes through ``extractors.runner.run_extraction`` into Parquet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from tiny_text_models import tiny_bert, tiny_qwen2, words

from extractors.knowledge.bridge import write_bridge
from extractors.knowledge.index import KnowledgeIndex, build_index
from extractors.knowledge.kb import ingest, read_kb
from extractors.registry import create_extractor
from extractors.runner import run_extraction
from medmix.cohort import Cohort, read_cohort, write_cohort
from medmix.store import read_features
from medmix.store.inputs import write_input_view

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NOTES = [
    "Blunting of the right costophrenic angle consistent with a moderate pleural effusion.",
    "Refractory septic shock with rising lactate on escalating vasopressors.",
    "Enhancing solid mass in the left kidney suspicious for renal cell carcinoma.",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny models (local_dir layout of rag_medcpt_qwen2), the demo KB and its index."""
    root = tmp_path_factory.mktemp("rag_tiny")
    kb = root / "kb.parquet"
    ingest("demo", kb)
    texts = [f"{t.title} {t.text}" for t in read_kb(kb)] + NOTES + ["heart_rate: 97; lactate: missing"]
    vocab = words(texts)
    models = root / "models"
    tiny_bert(models / "query_encoder", vocab, seed=1)
    tiny_bert(models / "article_encoder", vocab, seed=2)
    tiny_qwen2(models / "lm", vocab)
    settings = {"local_dir": str(models), "batch_size": 2, "options": {"index_dir": str(root / "index")}}
    enc, lm = create_extractor("rag_medcpt_qwen2", settings).index_specs()
    manifest = build_index(kb, root / "index", enc, lm)
    return {"root": root, "kb": kb, "settings": settings, "manifest": manifest}


def test_index_has_label_free_projection_into_qwen2_space(setup):
    man = setup["manifest"]
    assert man["encoder"]["model_id"] == "ncbi/MedCPT-Article-Encoder" and man["encoder"]["max_length"] == 512
    proj = man["projection"]
    assert proj["model_id"] == "Qwen/Qwen2-0.5B" and (proj["in_dim"], proj["out_dim"]) == (32, 896)
    index = KnowledgeIndex(setup["root"] / "index")
    assert index.index.ntotal == man["n"] == len(read_kb(setup["kb"]))
    # Unit-norm article embeddings: inner product = cosine.
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    # The projection was fit to the documents' mean token embeddings: it explains part of their variance.
    assert 0.0 < proj["r2_on_kb"] <= 1.0


def test_index_rebuild_is_byte_identical(setup, tmp_path):
    enc, lm = create_extractor("rag_medcpt_qwen2", setup["settings"]).index_specs()
    build_index(setup["kb"], tmp_path / "again", enc, lm)
    first, again = setup["root"] / "index", tmp_path / "again"
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"index.faiss", "embeddings.npy", "ids.json", "manifest.json", "projection_weight.npy"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_soft_prompt_path_end_to_end_into_parquet(setup, tmp_path):
    """run_extraction over text, an EHR series and a bridged CXR report; output = Eq. 6 recomputed by hand."""
    series = tmp_path / "ehr.csv"
    pd.DataFrame({"hour": [0, 1], "heart_rate": [88, 97], "lactate": [None, None]}).to_csv(series, index=False)
    cxr = str(tmp_path / "cxr.png")
    bridge = tmp_path / "bridge.parquet"
    write_bridge(bridge, ["s4"], [cxr], ["Large left pleural effusion with adjacent atelectasis."], [None],
                 {"bridge": "test"})

    ex = create_extractor("rag_medcpt_qwen2", setup["settings"])
    out = tmp_path / "features.parquet"
    summary = run_extraction(ex, ["s1", "s2", "s3"], [NOTES[0], None, str(series)], str(out))
    assert summary["present"] == 2 and summary["missing"] == 1
    feats = read_features(out)
    assert feats.embeddings.shape == (3, 896) and feats.present.tolist() == [True, False, True]
    assert feats.metadata["extractor"] == "rag_medcpt_qwen2"
    assert feats.metadata["knowledge_base"]["kb_hash"] == setup["manifest"]["kb_hash"]

    # Recompute Eq. 6 by hand for both present samples: MedCPT query [CLS] -> top-5 -> mean article
    # emb -> W,b -> Qwen2, batched exactly as the runner does it (batch_size 2: the note and the
    # serialised series form one batch, in length order, padded to the longer one; then one
    # [2, 1, 896] Qwen2 forward with an all-ones mask). Other shapes (a batch of one, no padding)
    # take other float32 kernels and summation orders, whose results differ by ~1e-4 on some CPUs.
    from transformers import AutoModel, AutoTokenizer

    ehr_text = "heart_rate: 97; lactate: missing"
    assert ex.prepare(str(series)) == ehr_text
    batch = sorted([NOTES[0], ehr_text], key=len)  # the runner's (and the query encoder's) order
    models = Path(setup["settings"]["local_dir"])
    tok = AutoTokenizer.from_pretrained(models / "query_encoder")
    qenc = AutoModel.from_pretrained(models / "query_encoder").eval()
    with torch.no_grad():
        enc = tok(batch, truncation=True, padding=True, max_length=64, return_tensors="pt")
        assert (enc["attention_mask"] == 0).any()  # padded together, as in the runner
        q = qenc(**enc).last_hidden_state[:, 0, :].numpy()
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = KnowledgeIndex(setup["root"] / "index")
    # The tiny random encoders put many articles within float32 rounding of each other (cosines
    # 1e-8 apart), so which of two tied articles comes 5th depends on the summation order: take the
    # top 5 from the index's exact search, as the code does (same q, same ties), and check by hand
    # in float64 that they are a true top 5 up to that rounding.
    _, top5 = index.search(q, 5)
    scores = q.astype(np.float64) @ index.embeddings.T.astype(np.float64)
    fifth_best = np.sort(scores, axis=1)[:, -5]
    assert (np.take_along_axis(scores, top5, axis=1) >= fifth_best[:, None] - 1e-6).all()
    pooled = index.embeddings[top5].mean(1)
    soft = pooled @ index.projection.weight + index.projection.bias
    lm = AutoModel.from_pretrained(models / "lm").eval()
    with torch.no_grad():
        hidden = lm(inputs_embeds=torch.tensor(soft, dtype=torch.float32).view(2, 1, 896),
                    attention_mask=torch.ones((2, 1), dtype=torch.long)).last_hidden_state
    expected = dict(zip(batch, hidden[:, -1].numpy(), strict=True))
    # Same operations on the same shapes: only rounding may differ (last hidden state values are O(1)).
    np.testing.assert_allclose(feats.embeddings[0], expected[NOTES[0]], rtol=0, atol=1e-5)
    np.testing.assert_allclose(feats.embeddings[2], expected[ehr_text], rtol=0, atol=1e-5)

    # Image kind: the cached bridged report is what gets retrieved from.
    ex_img = create_extractor("rag_medcpt_qwen2", {**setup["settings"], "options": {
        **setup["settings"]["options"], "bridge_path": str(bridge)}})
    out_img = tmp_path / "img.parquet"
    run_extraction(ex_img, ["s4", "s5"], [cxr, str(tmp_path / "unbridged.png")], str(out_img))
    img = read_features(out_img)
    assert img.present.tolist() == [True, False]
    direct = create_extractor("rag_medcpt_qwen2", setup["settings"])
    expected = direct.embed_batch(["Large left pleural effusion with adjacent atelectasis."])
    assert np.allclose(img.embeddings[0], expected[0], atol=1e-5)


def test_soft_prompt_is_one_token_of_qwen2_width(setup, monkeypatch):
    ex = create_extractor("rag_medcpt_qwen2", setup["settings"])
    ex.load()
    seen = {}
    forward = ex._lm.forward

    def spy(*args, **kwargs):
        seen["inputs_embeds"] = kwargs["inputs_embeds"].detach().cpu().numpy()
        return forward(*args, **kwargs)

    monkeypatch.setattr(ex._lm, "forward", spy)
    texts = [*NOTES, "pneumothorax"]
    out = ex.embed_batch(texts)
    assert seen["inputs_embeds"].shape == (4, 1, 896)
    assert out.shape == (4, 896) and out.dtype == np.float32 and np.isfinite(out).all()
    # The soft token is the projected mean of the top-5 retrieved article embeddings.
    _, idx = ex.retrieve(texts)
    assert idx.shape == (4, 5)
    expected = ex._index.projection.apply(ex._index.embeddings[idx].mean(1))
    assert np.allclose(seen["inputs_embeds"][:, 0, :], expected, atol=1e-6)
    # Different retrieved sets give different embeddings; identical sets identical ones.
    for a in range(4):
        for b in range(a + 1, 4):
            same = set(idx[a]) == set(idx[b])
            assert np.allclose(out[a], out[b], atol=1e-6) == same
    assert len({tuple(sorted(r)) for r in idx}) > 1


def test_leakage_guard_labels_and_splits_do_not_change_embeddings(setup, tmp_path):
    """Two cohorts with the same inputs but different labels and splits give identical RAG features."""
    from extractors.job import extract_job
    from extractors.registry import get_spec

    spec = get_spec("rag_medcpt_qwen2")
    series = tmp_path / "ehr.csv"
    pd.DataFrame({"hour": [0, 1], "heart_rate": [80, 120], "lactate": [1.1, 4.2]}).to_csv(series, index=False)
    ids = ["a", "b", "c", "d"]
    base = {"sample_id": ids, "patient_id": ["p1", "p2", "p3", "p4"],
            "input:note": [NOTES[0], NOTES[1], None, NOTES[2]],
            "input:ehr": [str(series), None, str(series), None]}
    variants = [(["train", "train", "val", "test"], [0.0, 1.0, 0.0, 1.0]),
                (["test", "val", "train", "train"], [1.0, 0.0, 1.0, 0.0])]
    outputs = []
    for k, (splits, labels) in enumerate(variants):
        frame = pd.DataFrame({**base, "split": splits, "label:mortality": labels})
        cohort = Cohort("leak", "binary", ["mortality"], {"note": "text", "ehr": "timeseries"}, frame)
        cohort_path = tmp_path / f"cohort{k}.parquet"
        write_cohort(cohort, cohort_path)
        view_path = tmp_path / f"inputs{k}.parquet"  # what the workflow's prepare_dataset writes
        write_input_view(view_path, read_cohort(cohort_path).input_view())
        assert not {"split", "label:mortality"} & set(pq.read_schema(view_path).names)
        for mod in ("note", "ehr"):
            out = tmp_path / f"{mod}{k}.parquet"
            extract_job(str(view_path), mod, "rag_medcpt_qwen2", str(out),
                        identity={"model_id": spec.hub_id, "revision": spec.revision,
                                  "preprocessing": spec.preprocessing},
                        runtime={"local_dir": setup["settings"]["local_dir"]},
                        options=setup["settings"]["options"])
            outputs.append((k, mod, read_features(out)))
    for mod, n_present in (("note", 3), ("ehr", 2)):
        first, second = [f for k, m, f in outputs if m == mod]
        assert first.present.tolist() == second.present.tolist()
        assert int(first.present.sum()) == n_present
        assert np.array_equal(first.embeddings, second.embeddings)


def _cls_unit(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        v = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    v = v.last_hidden_state[0, 0].numpy()
    return v / np.linalg.norm(v)


def test_medcpt_long_query_rule_against_reference(setup, tmp_path):
    """Issue 18: a query longer than 64 word pieces is encoded in 62-piece chunks ([CLS] chunk [SEP]).

    Reference by hand with transformers: chunk vectors = unit [CLS] of each chunk; ``chunk_mean`` =
    their renormalised mean; ``chunk_max`` scores each KB entry by its best chunk cosine. A short
    query gives exactly the model card's truncated vector.
    """
    import shutil

    from transformers import AutoModel, BertTokenizer

    # The fixture's tokenizer files map every word to [UNK] under transformers 5 (BertTokenizerFast
    # ignores vocab_file there); this test needs real word pieces, so its query tower's tokenizer is
    # rebuilt from vocab.txt alone (as MedCPT's and GatorTron's repositories are read).
    shared = Path(setup["settings"]["local_dir"])
    models = tmp_path / "models"
    models.mkdir()
    for part in ("article_encoder", "lm"):
        (models / part).symlink_to(shared / part)
    (models / "query_encoder").mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        shutil.copy(shared / "query_encoder" / name, models / "query_encoder" / name)
    BertTokenizer.from_pretrained(models / "query_encoder",
                                  do_lower_case=True).save_pretrained(models / "query_encoder")
    settings = {**setup["settings"], "local_dir": str(models)}
    tok = BertTokenizer.from_pretrained(models / "query_encoder")
    qenc = AutoModel.from_pretrained(models / "query_encoder").eval()
    long_note = " ".join(NOTES * 4) + " " + NOTES[2]  # decisive content repeated past the first 64 pieces
    ids = tok(long_note, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 * 62 and tok.unk_token_id not in ids
    chunks = [[tok.cls_token_id, *ids[s : s + 62], tok.sep_token_id] for s in range(0, len(ids), 62)]
    ref_chunks = np.stack([_cls_unit(qenc, c) for c in chunks])

    ex = create_extractor("rag_medcpt_qwen2", settings)
    assert ex.settings.preprocessing["long_query"] == "chunk_max"
    assert ex.metadata()["preprocessing"]["max_query_chunks"] == 16
    ex.load()
    got = ex._query_encoder.encode_query_chunks([long_note, NOTES[0]])
    np.testing.assert_allclose(got[0], ref_chunks, atol=1e-5)
    short_ref = _cls_unit(qenc, tok(NOTES[0])["input_ids"])  # fits in one chunk: the card's computation
    np.testing.assert_allclose(got[1][0], short_ref, atol=1e-5)

    # chunk_max retrieval: best chunk cosine per KB entry, top-5.
    index = KnowledgeIndex(setup["root"] / "index")
    best = (ref_chunks @ index.embeddings.T).max(axis=0)
    scores, idx = ex.retrieve([long_note])
    np.testing.assert_allclose(scores[0], np.sort(best)[::-1][:5], atol=1e-5)
    assert set(idx[0].tolist()) == set(np.argsort(-best)[:5].tolist())

    # chunk_mean and truncate (the card's rule) through the same settings.
    mean_ex = create_extractor("rag_medcpt_qwen2", {**settings, "preprocessing": {"long_query": "chunk_mean"}})
    mean_ex.load()
    mean_ref = ref_chunks.mean(0) / np.linalg.norm(ref_chunks.mean(0))
    np.testing.assert_allclose(mean_ex._query_encoder.encode_queries([long_note])[0], mean_ref, atol=1e-5)
    trunc = create_extractor("rag_medcpt_qwen2", {**settings, "preprocessing": {"long_query": "truncate"}})
    trunc.load()
    np.testing.assert_allclose(trunc._query_encoder.encode_queries([long_note])[0], ref_chunks[0], atol=1e-5)
    assert np.abs(mean_ref - ref_chunks[0]).max() > 1e-4  # the later chunks count (random tiny model: small)
