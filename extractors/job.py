"""Job body of the ``extract`` rule: one expert over one modality of a dataset's input view."""

from __future__ import annotations

import logging
from typing import Any

from extractors.registry import create_extractor
from extractors.runner import MAX_FAILED_FRACTION, run_extraction
from medmix.store.inputs import folder_fingerprint, read_input_view

log = logging.getLogger("medmix.extract")


def extract_job(
    inputs_path: str,
    modality: str,
    expert: str,
    out_path: str,
    identity: dict[str, Any],
    runtime: dict[str, Any],
    options: dict[str, Any] | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
) -> dict[str, Any]:
    """Embed ``modality`` of the input view with ``expert`` into ``out_path`` (atomic).

    The view holds sample ids, inputs and each modality's input schema (series variables, table
    columns and categories) only (no labels, no splits); the expert sizes itself from the schema.
    The fingerprint of what was read (inputs, the schema and, for files, their names, sizes and
    mtimes) goes into the file's metadata.
    ``max_failed_fraction`` is ``extraction.max_failed_fraction`` of config.yaml: the job fails,
    writing nothing, when more of the present inputs than that cannot be used.
    """
    view = read_input_view(inputs_path, [modality])
    settings = {
        **runtime,
        "model_id": identity.get("model_id"),
        "revision": identity.get("revision"),
        "preprocessing": identity.get("preprocessing", {}),
        "options": dict(options or {}),
        "input_schema": view.schema(modality),
    }
    extractor = create_extractor(expert, settings)
    kind = view.kinds[modality]
    if kind not in extractor.spec.kinds:
        raise ValueError(f"expert {expert!r} reads {extractor.spec.kinds}, but modality {modality!r} is {kind!r}")
    values = view.inputs(modality)
    log.info("dataset %s, modality %s (%s), expert %s, %d samples", view.dataset, modality, kind, expert, len(values))
    fingerprint = view.fingerprint(modality)
    return run_extraction(
        extractor,
        view.sample_ids,
        values,
        out_path,
        extra_metadata={"dataset": view.dataset, "modality": modality, "kind": kind, "input_fingerprint": fingerprint,
                        "weights_fingerprint": folder_fingerprint(runtime.get("local_dir"))},
        max_failed_fraction=max_failed_fraction,
    )
