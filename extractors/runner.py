"""Run one expert over one modality of one dataset and write its feature file."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import numpy as np

from extractors.base import Extractor, InputError
from medmix.store import hash_inputs, write_features

log = logging.getLogger("medmix.extract")


class _Prepared:
    """Map-style dataset that prepares inputs in DataLoader workers; failures become reasons."""

    def __init__(self, extractor: Extractor, values: list[Any]):
        self.extractor, self.values = extractor, values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int):
        try:
            return i, self.extractor.prepare(self.values[i]), None
        except InputError as err:
            return i, None, str(err)


def _collate(items):
    return items


def prepare_all(extractor: Extractor, values: list[Any], num_workers: int = 0):
    """Prepared inputs (or ``None``) and failure reasons, in input order."""
    ds = _Prepared(extractor, values)
    prepared: list[Any] = [None] * len(values)
    reasons: list[str | None] = [None] * len(values)
    if num_workers > 0 and len(values) > 1:
        from torch.utils.data import DataLoader

        loader = DataLoader(ds, batch_size=8, num_workers=num_workers, collate_fn=_collate)
        items = (item for batch in loader for item in batch)
    else:
        items = (ds[i] for i in range(len(ds)))
    for i, item, reason in items:
        prepared[i], reasons[i] = item, reason
    return prepared, reasons


def embed_all(extractor: Extractor, prepared: list[Any], batch_size: int) -> np.ndarray:
    """Embed the non-``None`` prepared inputs in length-sorted batches; returns ``[N, dim]``."""
    out = np.zeros((len(prepared), extractor.dim), np.float32)
    idx = [i for i, p in enumerate(prepared) if p is not None]
    idx.sort(key=lambda i: extractor.sort_key(prepared[i]))
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        emb = np.asarray(extractor.embed_batch([prepared[i] for i in chunk]), dtype=np.float32)
        if emb.shape != (len(chunk), extractor.dim):
            raise RuntimeError(
                f"expert {extractor.spec.name!r} returned shape {emb.shape}, expected {(len(chunk), extractor.dim)}"
            )
        out[chunk] = emb
    return out


def run_extraction(
    extractor: Extractor,
    sample_ids: list[str],
    values: list[Any],
    out_path: str,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Extract embeddings for ``values`` (``None`` = modality absent) and write ``out_path``.

    Unusable inputs are recorded as absent with their reason logged; no sample is dropped.
    Returns a summary dict (counts, reasons, timings).
    """
    t0 = time.perf_counter()
    s = extractor.settings
    # ``None`` cells never reach ``prepare``: they are natural missingness, not errors.
    prepared, reasons = [None] * len(values), ["missing in cohort"] * len(values)
    present_idx = [i for i, v in enumerate(values) if v is not None]
    p_sub, r_sub = prepare_all(extractor, [values[i] for i in present_idx], s.num_workers)
    for j, i in enumerate(present_idx):
        prepared[i], reasons[i] = p_sub[j], r_sub[j]
    t_prep = time.perf_counter()
    extractor.load()
    t_load = time.perf_counter()
    embeddings = embed_all(extractor, prepared, max(1, int(s.batch_size)))
    present = np.array([p is not None for p in prepared], dtype=bool)
    t_embed = time.perf_counter()
    for sid, p, reason in zip(sample_ids, prepared, reasons, strict=True):
        if p is None and reason != "missing in cohort":
            log.warning("sample %s recorded as absent: %s", sid, reason)
    meta = {**extractor.metadata(), **(extra_metadata or {}), "input_hash": hash_inputs(sample_ids, values)}
    write_features(out_path, sample_ids, embeddings, present, meta)
    counts = Counter("present" if p is not None else ("missing" if r == "missing in cohort" else "failed")
                     for p, r in zip(prepared, reasons, strict=True))
    summary = {
        "expert": extractor.spec.name,
        "n": len(sample_ids),
        "present": counts.get("present", 0),
        "missing": counts.get("missing", 0),
        "failed": counts.get("failed", 0),
        "seconds_prepare": round(t_prep - t0, 3),
        "seconds_load": round(t_load - t_prep, 3),
        "seconds_embed": round(t_embed - t_load, 3),
    }
    log.info(
        "expert %s: %d samples, %d present, %d missing in cohort, %d failed (unusable input); "
        "prepare %.1fs, load %.1fs, embed %.1fs",
        summary["expert"], summary["n"], summary["present"], summary["missing"], summary["failed"],
        t_prep - t0, t_load - t_prep, t_embed - t_load,
    )
    return summary
