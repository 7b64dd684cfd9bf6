"""The extraction runner's order of work: when inputs are embedded relative to their preparation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extractors.base import Extractor
from extractors.registry import ExpertSpec
from extractors.runner import CHUNK_BATCHES, run_extraction
from medmix.store import read_features


class _Recording(Extractor):
    """Test double: embeds numbers and records the order of ``prepare`` (P) and ``embed_batch`` (E) calls."""

    spec = ExpertSpec(name="recording_runner_test", kinds=("tabular",), role="general", dim=1)

    def __init__(self, settings):
        super().__init__(settings)
        self.calls: list[str] = []

    def prepare(self, value):
        self.calls.append("P")
        return float(value)

    def embed_batch(self, batch):
        self.calls.append("E")
        return np.array([[v] for v in batch], np.float32)


class _Sorting(_Recording):
    def sort_key(self, prepared):
        return -prepared


@pytest.mark.parametrize(("cls", "chunked"), [(_Recording, False), (_Sorting, True)])
def test_unsorted_experts_embed_each_batch_as_soon_as_it_is_prepared(tmp_path: Path, cls, chunked) -> None:
    batch, n = 4, 4 * (1 + 2 * CHUNK_BATCHES)
    extractor = cls({"batch_size": batch, "num_workers": 0})
    run_extraction(extractor, [f"s{i}" for i in range(n)], [str(i) for i in range(n)], str(tmp_path / "f.parquet"))
    calls = "".join(extractor.calls)
    if chunked:  # one batch first, then chunks of CHUNK_BATCHES batches sorted together
        expected = "P" * batch + "E" + ("P" * batch * CHUNK_BATCHES + "E" * CHUNK_BATCHES) * 2
    else:
        expected = ("P" * batch + "E") * (n // batch)
    assert calls == expected
    features = read_features(tmp_path / "f.parquet")
    assert features.embeddings[:, 0].tolist() == [float(i) for i in range(n)]  # every sample, in input order
