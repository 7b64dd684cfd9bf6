"""Sharded extraction: split one (dataset, modality, expert) job by a stable hash of the sample id.

A sample's shard is ``blake2b(sample_id) mod n``: it never depends on the other samples, the row
order or the process (unlike Python's ``hash``), so adding a sample or editing one input file
changes one shard's inputs only. Each shard is one extraction job writing one Parquet part (the
feature store's own format, :func:`medmix.store.write_features`) whose metadata records the
shard's input fingerprint; :func:`merge_parts` checks the parts against the input view and writes
the one feature file stage 2 reads, in the view's row order, atomically — the same file an
unsharded job writes, apart from the ``shards`` metadata key.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medmix.store import FeatureStoreError, hash_inputs, read_features, write_features

#: Metadata keys that differ between parts (and are summed or rebuilt by the merge).
PART_KEYS = ("shard", "shards", "input_fingerprint", "input_hash", "failed_reasons", "failed_samples",
             "failed_samples_not_listed", "n", "n_present")


def shard_of(sample_id: str, shards: int) -> int:
    """The shard (``0 .. shards-1``) of one sample id: blake2b of its UTF-8 bytes, mod ``shards``."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    digest = hashlib.blake2b(str(sample_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_rows(sample_ids: list[str], shards: int) -> list[list[int]]:
    """Row indices of each shard, in row order."""
    rows: list[list[int]] = [[] for _ in range(shards)]
    for i, sid in enumerate(sample_ids):
        rows[shard_of(sid, shards)].append(i)
    return rows


def part_path(dataset: str, modality: str, expert: str, shard: int, shards: int) -> str:
    """Where shard ``shard`` of ``shards`` of one feature file is written (``shards`` is in the
    name, so changing the shard count never mixes parts of two layouts)."""
    return f"results/{dataset}/feature_shards/{modality}/{expert}/{shard}-of-{shards}.parquet"


def merge_parts(
    parts: list[str | Path],
    sample_ids: list[str],
    values: list[Any],
    out_path: str | Path,
    input_fingerprint: str,
    max_listed: int = 1000,
) -> dict[str, Any]:
    """Merge the parts of one feature file into ``out_path`` (atomic), in ``sample_ids`` order.

    Every part must hold exactly the ids of its shard of ``sample_ids`` (a stale part from another
    view is refused, naming the part and the ids) and the same expert identity and width.
    ``values`` are the view's inputs (for the ``input_hash`` an unsharded job records) and
    ``input_fingerprint`` the whole modality's (:meth:`InputView.fingerprint`); ``max_listed`` is
    how many failed samples the metadata names (``extractors.runner.MAX_FAILED_LISTED``).
    Returns the merged metadata (with ``n`` and ``n_present``).
    """
    if not parts:
        raise FeatureStoreError(f"{out_path}: no parts to merge")
    shards = len(parts)
    expected = shard_rows(sample_ids, shards)
    index = {sid: i for i, sid in enumerate(sample_ids)}
    files = [read_features(p) for p in parts]
    dim = files[0].dim
    embeddings = np.zeros((len(sample_ids), dim), np.float32)
    present = np.zeros(len(sample_ids), dtype=bool)
    reasons: Counter[str] = Counter()
    failed: dict[str, str] = {}
    first = {k: v for k, v in files[0].metadata.items() if k not in PART_KEYS}
    for k, (path, ff) in enumerate(zip(parts, files, strict=True)):
        meta = ff.metadata
        if meta.get("shard") != k or meta.get("shards") != shards:
            raise FeatureStoreError(f"{path}: holds shard {meta.get('shard')} of {meta.get('shards')}, "
                                    f"expected shard {k} of {shards}; rerun its extraction")
        same = {key: v for key, v in meta.items() if key not in PART_KEYS}
        if same != first:
            diff = sorted(key for key in set(same) | set(first) if same.get(key) != first.get(key))
            raise FeatureStoreError(f"{path}: metadata {diff} differ from those of {parts[0]}; rerun its extraction")
        want = [sample_ids[i] for i in expected[k]]
        if ff.sample_ids != want:
            extra = sorted(set(ff.sample_ids) - set(want))[:3]
            lost = sorted(set(want) - set(ff.sample_ids))[:3]
            raise FeatureStoreError(f"{path}: sample ids are not those of shard {k} of {shards} of the input view "
                                    f"(not in the shard, e.g. {extra}; missing, e.g. {lost}); rerun its extraction")
        rows = np.fromiter((index[s] for s in ff.sample_ids), dtype=np.int64, count=len(ff.sample_ids))
        embeddings[rows], present[rows] = ff.embeddings, ff.present
        reasons.update(meta.get("failed_reasons", {}))
        failed.update(meta.get("failed_samples", {}))
    # The failed samples an unsharded job lists: the first ones in row order.
    listed = dict([(sid, failed[sid]) for sid in sample_ids if sid in failed][:max_listed])
    not_listed = sum(reasons.values()) - len(listed)
    merged = {
        **first,
        "shards": shards,
        "input_fingerprint": input_fingerprint,
        "input_hash": hash_inputs(sample_ids, values),
        "failed_reasons": dict(reasons.most_common()),
        "failed_samples": listed,
    }
    if not_listed:
        merged["failed_samples_not_listed"] = not_listed
    write_features(out_path, sample_ids, embeddings, present, merged)
    return {**merged, "n": len(sample_ids), "n_present": int(present.sum())}
