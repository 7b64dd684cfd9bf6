"""``text_keywords``: a weight-free bag-of-n-grams expert that sees exact tokens.

Lower-cased word tokens (letters/digits, keeping inner ``.``, ``-``, ``/`` and ``+`` so codes
like ``r91.8`` or ``5-fu`` and doses like ``10mg/kg`` stay whole), unigrams and adjacent-pair
bigrams. Each distinct n-gram with count ``c`` adds ``sign * (1 + ln c)`` (sublinear tf) to
bucket ``h mod 512``, where ``h`` and ``sign`` come from a stable BLAKE2b hash of the n-gram
(not Python's salted ``hash``; :mod:`extractors.text_hashing`). The vector is L2-normalised -> 512 dims. Unlike a
sentence encoder it keeps ICD codes and drug names apart exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.inputs import read_text
from extractors.registry import ExpertSpec, register_expert
from extractors.text_hashing import hash_counts, text_tokens, word_ngrams

DIM = 512


def hashed_ngrams(text: str, dim: int = DIM) -> np.ndarray:
    """The L2-normalised signed hashed unigram+bigram vector of ``text`` (no salt: the original
    feature family of this expert, so its embeddings are unchanged)."""
    return hash_counts([("", word_ngrams(text_tokens(text), 2))], dim)


@register_expert(
    ExpertSpec(
        name="text_keywords",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("text",),
        role="biomed",
        dim=DIM,
        preprocessing={"ngrams": [1, 2], "hash": "blake2b-64", "tf": "1+ln", "lowercase": True, "norm": "l2"},
        offline=True,
        description="Weight-free signed feature hashing of word unigrams+bigrams (exact codes and drug names).",
        mem_mb=300,
    )
)
class TextKeywords(Extractor):
    def prepare(self, value: Any) -> np.ndarray:
        return hashed_ngrams(read_text(value), self.dim)

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack(batch).astype(np.float32)
