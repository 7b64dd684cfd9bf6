"""Job bodies of the RAG rules (``kb_ingest``, ``rag_index``, ``bridge``); the scripts are thin adapters."""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

from extractors.base import EMBEDDING_SETTINGS, resolve_device
from extractors.knowledge.bridge import BridgeSettings, create_bridge, run_bridge
from extractors.knowledge.index import build_index
from extractors.knowledge.kb import ingest
from extractors.registry import create_extractor
from medmix.store.inputs import read_input_view

log = logging.getLogger("medmix.rag")


def kb_job(source: str, out_path: str, language: str = "English") -> dict[str, Any]:
    meta = ingest(source, out_path, language)
    log.info("knowledge base %s: %d topics from %s (hash %s)", out_path, meta["n"], source, meta["kb_hash"])
    return meta


def index_job(expert: str, kb_path: str, out_dir: str, identity: dict[str, Any],
              runtime: dict[str, Any]) -> dict[str, Any]:
    """Build ``expert``'s retrieval index (and projection) from the knowledge base."""
    settings = {**runtime, **{k: identity[k] for k in EMBEDDING_SETTINGS if k in identity}}
    encoder, lm = create_extractor(expert, settings).index_specs()
    manifest = build_index(kb_path, out_dir, encoder, lm, device=resolve_device(runtime.get("device", "auto")),
                           batch_size=int(runtime.get("batch_size", 16)))
    log.info("index %s: %d articles, dim %d, encoder %s@%s%s", out_dir, manifest["n"], manifest["dim"],
             encoder.model_id, encoder.revision,
             "" if lm is None
             else f", projection to {lm.model_id} (R^2 on KB {manifest['projection']['r2_on_kb']:.3f})")
    return manifest


def bridge_job(inputs_path: str, modality: str, bridge_name: str, out_path: str, settings: dict[str, Any],
               paired_frontal: str | None = None) -> dict[str, Any]:
    """Generate and cache one report per sample of ``modality`` (see :mod:`extractors.knowledge.bridge`).

    For MAIRA-2, ``paired_frontal`` names the frontal CXR modality a lateral modality is paired
    with (MAIRA-2 needs the current frontal view); without it the modality is read as frontal.
    """
    known = {f.name for f in fields(BridgeSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"config key `rag.bridges.{bridge_name}`: unknown setting(s) {unknown}; "
                         f"known: {sorted(known)}")
    cohort = read_input_view(inputs_path)
    values = cohort.inputs(modality)
    gen_values: list[Any] = values
    if bridge_name == "maira2":
        if paired_frontal:
            if paired_frontal not in cohort.kinds:
                raise KeyError(f"config key `rag.cxr_pairs.{modality}`: dataset {cohort.dataset!r} has no "
                               f"modality {paired_frontal!r}")
            frontal = cohort.inputs(paired_frontal)
            gen_values = [None if v is None else {"frontal": f, "lateral": v}
                          for v, f in zip(values, frontal, strict=True)]
        else:
            gen_values = [None if v is None else {"frontal": v, "lateral": None} for v in values]
    summary = run_bridge(create_bridge(bridge_name, settings), cohort.sample_ids, gen_values, out_path, keys=values)
    log.info("bridge %s for %s/%s: %s", bridge_name, cohort.dataset, modality, summary)
    return summary
