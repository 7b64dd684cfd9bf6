"""Job body of the ``extract`` rule."""

from __future__ import annotations

import logging
from typing import Any

from extractors.registry import create_extractor
from extractors.runner import MAX_FAILED_FRACTION, run_extraction
from medmix.cohort import read_cohort

log = logging.getLogger("medmix.extract")


def extract_job(
    cohort_path: str,
    modality: str,
    expert: str,
    out_path: str,
    identity: dict[str, Any],
    runtime: dict[str, Any],
    options: dict[str, Any] | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
) -> dict[str, Any]:
    """Embed ``modality`` of the cohort with ``expert`` into ``out_path`` (atomic).

    ``max_failed_fraction`` is ``extraction.max_failed_fraction`` of config.yaml: the job fails,
    writing nothing, when more of the present inputs than that cannot be used.
    """
    cohort = read_cohort(cohort_path)
    if modality not in cohort.modalities:
        raise KeyError(f"{cohort_path}: dataset {cohort.name!r} has no modality {modality!r}")
    settings = {
        **runtime,
        "model_id": identity.get("model_id"),
        "revision": identity.get("revision"),
        "preprocessing": identity.get("preprocessing", {}),
        "options": dict(options or {}),
    }
    extractor = create_extractor(expert, settings)
    kind = cohort.modalities[modality]
    if kind not in extractor.spec.kinds:
        raise ValueError(f"expert {expert!r} reads {extractor.spec.kinds}, but modality {modality!r} is {kind!r}")
    log.info("dataset %s, modality %s (%s), expert %s, %d samples", cohort.name, modality, kind, expert, len(cohort.frame))
    return run_extraction(
        extractor,
        cohort.sample_ids,
        cohort.inputs(modality),
        out_path,
        extra_metadata={"dataset": cohort.name, "modality": modality, "kind": kind},
        max_failed_fraction=max_failed_fraction,
    )
