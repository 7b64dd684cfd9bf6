"""``text_char_ngrams``: signed feature hashing of character 3-5-grams within words (weight-free).

Lower-cased word tokens (the tokenizer of :mod:`extractors.text_hashing`), each padded as
``' tok '``; every character n-gram of length 3, 4 and 5 inside a padded token (scikit-learn's
``char_wb`` rule) with count ``c`` adds ``sign * (1 + ln c)`` (sublinear tf) to bucket
``h mod 2048`` of a stable BLAKE2b hash; the vector is L2-normalised. Sub-word pieces make
inflections, typos and compounds (``atelecta``-sis/-tic, ``calcif``-ied/-ication) share
features, which whole-word hashing cannot. Nothing is fitted: the output of a text depends on
that text only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import Extractor
from extractors.inputs import read_text
from extractors.registry import ExpertSpec, register_expert
from extractors.text_hashing import char_ngrams, hash_counts, text_tokens

DIM = 2048
CHAR_RANGE = (3, 5)


def char_ngram_vector(text: str, dim: int = DIM) -> np.ndarray:
    """The L2-normalised signed hashed character 3-5-gram vector of ``text``."""
    return hash_counts([("c", char_ngrams(text_tokens(text), *CHAR_RANGE))], dim)


@register_expert(
    ExpertSpec(
        name="text_char_ngrams",
        params=0,
        flops_per_sample=None,
        cost_note="non-neural: no learned parameters; FLOPs not counted",
        kinds=("text",),
        role="general",
        dim=DIM,
        preprocessing={"char_ngrams": list(CHAR_RANGE), "analyzer": "char_wb", "hash": "blake2b-64", "salt": "c",
                       "tf": "1+ln", "lowercase": True, "norm": "l2"},
        offline=True,
        description="Weight-free signed feature hashing of within-word character 3-5-grams into 2048 buckets.",
        mem_mb=300,
    )
)
class TextCharNgrams(Extractor):

    def prepare(self, value: Any) -> np.ndarray:
        return char_ngram_vector(read_text(value), self.dim)

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.stack(batch).astype(np.float32)
