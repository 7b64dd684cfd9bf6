"""``text_ngrams_wide``: wide signed feature hashing of word 1-2-grams (weight-free, label-free).

Like ``text_keywords`` (same tokenizer) but with 4x the buckets: lower-cased word tokens, all
unigrams and bigrams, each distinct n-gram with count ``c`` adds ``sign * (1 + ln c)``
(sublinear tf) to bucket ``h mod 2048`` of a stable BLAKE2b hash, then L2 normalisation. Fewer
collisions keep more of the exact vocabulary of a report apart (e.g. ``granuloma`` /
``granulomas`` / ``calcified granuloma``). Nothing is fitted (no vocabulary, no idf): the
vector of a text depends on that text only. Helpers: :mod:`extractors.text_hashing`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.inputs import read_text
from extractors.registry import ExpertSpec, register_expert
from extractors.text_hashing import hash_counts, text_tokens, word_ngrams

DIM = 2048
NGRAM_MAX = 2


def wide_ngrams(text: str, dim: int = DIM) -> np.ndarray:
    """The L2-normalised signed hashed word 1..NGRAM_MAX-gram vector of ``text``."""
    return hash_counts([("w", word_ngrams(text_tokens(text), NGRAM_MAX))], dim)


@register_expert(
    ExpertSpec(
        name="text_ngrams_wide",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("text",),
        role="biomed",
        dim=DIM,
        preprocessing={"ngrams": [1, NGRAM_MAX], "hash": "blake2b-64", "salt": "w", "tf": "1+ln",
                       "lowercase": True, "norm": "l2"},
        offline=True,
        description="Weight-free signed feature hashing of word 1-2-grams into 2048 buckets (sublinear tf, L2).",
        mem_mb=300,
    )
)
class TextNgramsWide(Extractor):

    def prepare(self, value: Any) -> np.ndarray:
        return wide_ngrams(read_text(value), self.dim)

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack(batch).astype(np.float32)
