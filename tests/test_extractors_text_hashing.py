"""The hashed text experts ``text_ngrams_wide`` and ``text_char_ngrams``: dims, determinism,
empty text -> absent, and a by-hand reference computation."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from extractors.registry import create_extractor, expert_module, get_spec
from extractors.runner import run_extraction
from extractors.text_hashing import char_ngrams, word_ngrams
from medmix.plan.code_closure import closure_files
from medmix.store import read_features

NOTES = ["Calcified granuloma in the right upper lobe. No pleural effusion.",
         "Heart size normal. Lungs clear. Lungs clear.", "", "   ", "XXXX XXXX", None]


def _reference(grams: dict[str, int], dim: int, salt: str) -> np.ndarray:
    vec = np.zeros(dim)
    for gram, count in grams.items():
        h = int.from_bytes(hashlib.blake2b((salt + gram).encode(), digest_size=8).digest(), "little")
        vec[(h >> 1) % dim] += (1.0 if h & 1 else -1.0) * (1 + math.log(count))
    return vec / np.linalg.norm(vec)


@pytest.mark.parametrize("name", ["text_ngrams_wide", "text_char_ngrams"])
def test_dims_determinism_and_absent(name, tmp_path):
    ex = create_extractor(name)
    assert get_spec(name).offline and ex.dim == 2048
    assert any(f.endswith("text_hashing.py") for f in closure_files(expert_module(name)))
    ids = [f"s{i}" for i in range(len(NOTES))]
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    run_extraction(ex, ids, NOTES, str(a))
    run_extraction(create_extractor(name, {"batch_size": 1}), ids, NOTES, str(b))
    fa, fb = read_features(a), read_features(b)
    assert fa.embeddings.shape == (len(NOTES), 2048)
    np.testing.assert_array_equal(fa.embeddings, fb.embeddings)
    assert fa.present.tolist() == [True, True, False, False, True, False]
    np.testing.assert_allclose(np.linalg.norm(fa.embeddings[fa.present], axis=1), 1.0, rtol=1e-5)
    assert (fa.embeddings[~fa.present] == 0).all()


def test_word_ngrams_reference():
    ex = create_extractor("text_ngrams_wide")
    text = "Lungs clear. Lungs CLEAR!"
    grams = {"lungs": 2, "clear": 2, "lungs clear": 2, "clear lungs": 1}
    assert dict(word_ngrams(["lungs", "clear", "lungs", "clear"], 2)) == grams
    np.testing.assert_allclose(ex.embed_batch([ex.prepare(text)])[0], _reference(grams, 2048, "w"), rtol=1e-6)


def test_char_ngrams_reference():
    ex = create_extractor("text_char_ngrams")
    grams = {" ab": 1, "ab ": 1, " ab ": 1, " x ": 1}
    # ' ab ' (4 chars): 3-grams ' ab', 'ab ', 4-gram ' ab '; ' x ' (3 chars): itself once.
    assert dict(char_ngrams(["ab", "x"], 3, 5)) == grams
    np.testing.assert_allclose(ex.embed_batch([ex.prepare("AB x")])[0], _reference(grams, 2048, "c"), rtol=1e-6)
    from sklearn.feature_extraction.text import CountVectorizer

    text = "Calcified granulomas a xx-1 AB"
    vec = CountVectorizer(analyzer="char_wb", ngram_range=(3, 5), token_pattern=None).fit([text.lower()])
    sk = dict(zip(vec.get_feature_names_out(), vec.transform([text.lower()]).toarray()[0].tolist(), strict=True))
    ours = char_ngrams(["calcified", "granulomas", "a", "xx-1", "ab"], 3, 5)
    assert sk == dict(ours)
    # Inflections share sub-word features, so they are closer than under whole-word hashing.
    a, b = (ex.prepare(t) for t in ("atelectasis", "atelectatic"))
    assert float(a @ b) > 0.3
