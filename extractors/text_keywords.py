"""``text_keywords``: a weight-free bag-of-n-grams expert that sees exact tokens.

Lower-cased word tokens (letters/digits, keeping inner ``.``, ``-``, ``/`` and ``+`` so codes
like ``r91.8`` or ``5-fu`` and doses like ``10mg/kg`` stay whole), unigrams and adjacent-pair
bigrams. Each distinct n-gram with count ``c`` adds ``sign * (1 + ln c)`` (sublinear tf) to
bucket ``h mod 512``, where ``h`` and ``sign`` come from a stable BLAKE2b hash of the n-gram
(not Python's salted ``hash``). The vector is L2-normalised -> 512 dims. Unlike a sentence
encoder it keeps ICD codes and drug names apart exactly.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np

from extractors.base import Extractor, InputError
from extractors.inputs import read_text
from extractors.registry import ExpertSpec, register_expert

DIM = 512
TOKEN_RE = re.compile(r"[a-z0-9]+(?:[.\-/+][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


@lru_cache(maxsize=200_000)
def _bucket(ngram: str, dim: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(ngram.encode("utf-8"), digest_size=8).digest(), "little")
    return (digest >> 1) % dim, (1.0 if digest & 1 else -1.0)


def hashed_ngrams(text: str, dim: int = DIM) -> np.ndarray:
    """The L2-normalised signed hashed unigram+bigram vector of ``text``."""
    tokens = tokenize(text)
    if not tokens:
        raise InputError("text has no word tokens")
    grams = Counter(tokens)
    grams.update(f"{a} {b}" for a, b in zip(tokens[:-1], tokens[1:], strict=True))
    vec = np.zeros(dim, np.float64)
    for gram, count in grams.items():
        index, sign = _bucket(gram, dim)
        vec[index] += sign * (1.0 + math.log(count))
    norm = np.linalg.norm(vec)
    # Colliding opposite signs can cancel exactly; then the text has no usable signal.
    if norm == 0:
        raise InputError("text's hashed n-grams cancel out")
    return (vec / norm).astype(np.float32)


@register_expert(
    ExpertSpec(
        name="text_keywords",
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
