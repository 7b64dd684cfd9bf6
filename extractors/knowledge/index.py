"""The retrieval index folder: knowledge-base articles encoded, L2-normalised, in FAISS.

Folder layout (every file a deterministic function of the knowledge base and the encoder, so a
rebuild from the same inputs is byte-identical; no timestamps or machine paths are recorded):

- ``index.faiss``: ``faiss.IndexFlatIP`` over the article embeddings (inner product of unit
  vectors = cosine similarity);
- ``embeddings.npy``: the same article embeddings, float32 ``[N, d]`` (row ``i`` = KB entry ``i``);
- ``ids.json``: ``{"ids": [...], "titles": [...]}`` in index order;
- ``projection_weight.npy`` / ``projection_bias.npy``: the label-free projection into a
  language model's input-embedding space (MedCPT + Qwen2 path only; see
  :mod:`extractors.knowledge.projection`);
- ``manifest.json``: encoder id/revision/max length, KB hash, dims, projection settings and the
  SHA-256 of every other file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extractors.knowledge.encoders import EncoderSpec, build_encoder, l2_normalise
from extractors.knowledge.kb import kb_hash, read_kb
from extractors.knowledge.projection import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_RIDGE_LAMBDA,
    Projection,
    fit_ridge,
    load_projection,
    save_projection,
    token_mean_embeddings,
)
from medmix.store.atomic import atomic_dir, write_json_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class RetrievalIndexError(ValueError):
    """An index folder is missing, corrupt or was built for other settings than requested."""


@dataclass
class LanguageModelSpec:
    """The language model whose input-embedding space the projection targets."""

    model_id: str
    revision: str | None = None
    source: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    ridge_lambda: float = DEFAULT_RIDGE_LAMBDA
    #: The RAG expert (named in "model unavailable" messages) and its ``options.offline`` (None:
    #: ``experts.offline``); not part of ``identity``.
    expert: str | None = None
    offline: bool | None = None

    def identity(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "revision": self.revision, "max_tokens": self.max_tokens,
                "ridge_lambda": self.ridge_lambda, "target": "mean input embedding of the document's tokens"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dump_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, sort_keys=True, indent=1, ensure_ascii=False)


def build_index(
    kb_path: str | Path,
    out_dir: str | Path,
    encoder: EncoderSpec,
    lm: LanguageModelSpec | None = None,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Encode the knowledge base, write the index folder (and projection if ``lm``); returns the manifest."""
    import faiss

    topics = read_kb(kb_path)
    titles, texts = [t.title for t in topics], [t.text for t in topics]
    emb = l2_normalise(build_encoder(encoder, device, batch_size).encode_articles(titles, texts))
    if not np.isfinite(emb).all():
        raise RetrievalIndexError(f"{kb_path}: encoder {encoder.model_id!r} produced non-finite embeddings")
    projection: Projection | None = None
    if lm is not None:
        targets = token_mean_embeddings(lm.source or lm.model_id, lm.revision, titles, texts, lm.max_tokens,
                                        model_id=lm.model_id, offline=lm.offline, expert=lm.expert)
        projection = fit_ridge(emb, targets, lm.ridge_lambda)

    with atomic_dir(out_dir) as tmp:  # a reader never sees a half-written index
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        faiss.write_index(index, str(tmp / "index.faiss"))
        with open(tmp / "embeddings.npy", "wb") as fh:
            np.save(fh, emb, allow_pickle=False)
        _dump_json(tmp / "ids.json", {"ids": [t.id for t in topics], "titles": titles})
        if projection is not None:
            save_projection(str(tmp), projection)
        manifest = {
            "format": FORMAT_VERSION,
            "kb_hash": kb_hash(topics),
            "n": len(topics),
            "dim": int(emb.shape[1]),
            "metric": "inner product of L2-normalised vectors (cosine)",
            "encoder": encoder.identity(),
            "projection": None if projection is None else {
                **lm.identity(), "in_dim": int(projection.weight.shape[0]),
                "out_dim": int(projection.weight.shape[1]), "r2_on_kb": round(projection.r2, 6)},
            "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir())},
        }
        _dump_json(tmp / MANIFEST, manifest)
    return manifest


class KnowledgeIndex:
    """A loaded index folder: search by cosine and pool the retrieved article embeddings."""

    def __init__(self, folder: str | Path):
        import faiss

        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.exists():
            raise RetrievalIndexError(f"{self.folder}: no {MANIFEST}; not a retrieval index folder "
                                      "(run the rag_index rule)")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        for name, digest in self.manifest.get("files", {}).items():
            if not (self.folder / name).exists() or _sha256(self.folder / name) != digest:
                raise RetrievalIndexError(f"{self.folder}: {name} is missing or does not match the "
                                          "manifest; rebuild the index")
        self.index = faiss.read_index(str(self.folder / "index.faiss"))
        self.embeddings = np.load(self.folder / "embeddings.npy", allow_pickle=False)
        meta = json.loads((self.folder / "ids.json").read_text(encoding="utf-8"))
        self.ids, self.titles = meta["ids"], meta["titles"]
        if self.index.ntotal != len(self.ids) or self.embeddings.shape[0] != len(self.ids):
            raise RetrievalIndexError(f"{self.folder}: index, embeddings and ids disagree in size")
        self.projection = None
        if self.manifest.get("projection"):
            self.projection = load_projection(str(self.folder),
                                              self.manifest["projection"].get("r2_on_kb", float("nan")))

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def check(self, encoder: dict[str, Any], lm: dict[str, Any] | None = None) -> None:
        """Fail unless the index was built with ``encoder`` (and projected for ``lm``) identities."""
        got = self.manifest.get("encoder", {})
        diffs = [f"encoder.{k}: index {got.get(k)!r}, expected {v!r}" for k, v in encoder.items() if got.get(k) != v]
        if lm is not None:
            proj = self.manifest.get("projection") or {}
            diffs += [f"projection.{k}: index {proj.get(k)!r}, expected {v!r}" for k, v in lm.items()
                      if proj.get(k) != v]
        if diffs:
            raise RetrievalIndexError(f"{self.folder}: built for other settings ({'; '.join(diffs)}); "
                                      "rebuild it (rag_index rule)")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine scores and row indices, best first; ``[B, k]`` each."""
        q = l2_normalise(np.ascontiguousarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise RetrievalIndexError(f"{self.folder}: query dim {q.shape[1]} != index dim {self.dim}")
        k = min(int(k), len(self.ids))
        scores, idx = self.index.search(q, k)
        return scores, idx

    def search_chunks(self, chunks: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``chunk_max`` retrieval: each entry scored by its best cosine over a query's chunk vectors.

        ``chunks[b]`` is ``[n_b, d]`` (unit rows); returns top-``k`` scores and row indices, best
        first (ties: lower row first), ``[B, k]`` each.
        """
        k = min(int(k), len(self.ids))
        scores = np.zeros((len(chunks), k), np.float32)
        idx = np.zeros((len(chunks), k), np.int64)
        for b, c in enumerate(chunks):
            c = l2_normalise(np.atleast_2d(np.asarray(c, np.float32)))
            if c.shape[1] != self.dim:
                raise RetrievalIndexError(f"{self.folder}: query dim {c.shape[1]} != index dim {self.dim}")
            best = (c @ self.embeddings.T).max(axis=0)
            top = np.lexsort((np.arange(len(best)), -best))[:k]
            scores[b], idx[b] = best[top], top
        return scores, idx

    def pooled(self, idx: np.ndarray) -> np.ndarray:
        """Mean of the retrieved article embeddings per query row (Eq. 6's inner average); [B, d]."""
        return self.embeddings[np.asarray(idx)].mean(axis=1).astype(np.float32)
