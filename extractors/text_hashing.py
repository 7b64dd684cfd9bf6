"""Shared helpers of the weight-free hashed text experts (not an expert itself).

Signed feature hashing with a stable BLAKE2b hash (not Python's salted ``hash``): an n-gram ``g``
with count ``c`` in the text adds ``sign(g) * (1 + ln c)`` (sublinear tf) to bucket
``h(g) mod dim``; the vector is then L2-normalised. Nothing is fitted: the output of a text
depends on that text only (no vocabulary, no idf, no labels, no splits).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from extractors.base import InputError

#: Lower-cased word tokens; inner ``.``, ``-``, ``/`` and ``+`` keep codes and doses whole.
TOKEN_RE = re.compile(r"[a-z0-9]+(?:[.\-/+][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


@lru_cache(maxsize=500_000)
def bucket(gram: str, dim: int, salt: str = "") -> tuple[int, float]:
    """(bucket, sign) of ``gram`` in ``dim`` buckets; ``salt`` separates feature families."""
    digest = int.from_bytes(hashlib.blake2b((salt + gram).encode("utf-8"), digest_size=8).digest(), "little")
    return (digest >> 1) % dim, (1.0 if digest & 1 else -1.0)


def word_ngrams(tokens: list[str], n_max: int) -> Counter[str]:
    """Counts of word n-grams for ``n = 1 .. n_max`` (joined by a space)."""
    grams: Counter[str] = Counter()
    for n in range(1, n_max + 1):
        grams.update(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def char_ngrams(tokens: list[str], n_min: int, n_max: int) -> Counter[str]:
    """Counts of character n-grams inside word boundaries, scikit-learn's ``char_wb`` rule: each
    token is padded as ``' tok '``; once ``n`` reaches the padded length, the padded token is
    counted once and longer ``n`` add nothing."""
    grams: Counter[str] = Counter()
    for tok in tokens:
        padded = f" {tok} "
        for n in range(n_min, n_max + 1):
            if len(padded) <= n:
                grams[padded] += 1
                break
            grams.update(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


def hash_counts(families: Iterable[tuple[str, Counter[str]]], dim: int) -> np.ndarray:
    """The L2-normalised signed hashed vector of ``(salt, counts)`` families (sublinear tf)."""
    vec = np.zeros(dim, np.float64)
    for salt, counts in families:
        for gram, count in counts.items():
            index, sign = bucket(gram, dim, salt)
            vec[index] += sign * (1.0 + math.log(count))
    norm = np.linalg.norm(vec)
    # Colliding opposite signs can cancel exactly; then the text has no usable signal.
    if norm == 0:
        raise InputError("text's hashed n-grams cancel out")
    return (vec / norm).astype(np.float32)


def text_tokens(text: str) -> list[str]:
    tokens = tokenize(text)
    if not tokens:
        raise InputError("text has no word tokens")
    return tokens
