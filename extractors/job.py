"""Job body of the ``extract`` rule: one expert over one modality of a dataset's input view."""

from __future__ import annotations

import logging
from typing import Any

from extractors.base import resolve_device
from extractors.registry import create_extractor, get_spec
from extractors.runner import MAX_FAILED_FRACTION, MAX_FAILED_LISTED, run_extraction
from medmix.store.inputs import folder_fingerprint, input_fingerprint, read_input_view
from medmix.store.shards import merge_parts, shard_rows

log = logging.getLogger("medmix.extract")


def default_batch_size(expert: str, runtime: dict[str, Any]) -> int:
    """The batch size of a job: ``runtime["batch_size"]`` if set, else the one the expert's
    registry entry declares for the device the job will run on (``runtime["device"]``, ``auto``:
    CUDA when present). CPU-only experts never import torch for this."""
    if "batch_size" in runtime:
        return int(runtime["batch_size"])
    spec = get_spec(expert)
    return spec.batch_size_for(resolve_device(runtime.get("device", "auto")) if spec.gpu else "cpu")


def extract_job(
    inputs_path: str,
    modality: str,
    expert: str,
    out_path: str,
    identity: dict[str, Any],
    runtime: dict[str, Any],
    options: dict[str, Any] | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
    shard: int = 0,
    shards: int = 1,
    code_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Embed ``modality`` of the input view with ``expert`` into ``out_path`` (atomic).

    With ``shards > 1`` only the samples of shard ``shard`` (:func:`medmix.store.shards.shard_of`)
    are embedded, into one part whose metadata records the shard and the fingerprint of the
    shard's inputs; :func:`merge_job` assembles the parts. The batch size, unless set in
    ``runtime``, is the one the expert declares for the device the job runs on.

    The view holds sample ids, inputs and each modality's input schema (series variables, table
    columns and categories) only (no labels, no splits); the expert sizes itself from the schema.
    The fingerprint of what was read (inputs, the schema and, for files, their names, sizes and
    mtimes) goes into the file's metadata.
    ``max_failed_fraction`` is ``extraction.max_failed_fraction`` of config.yaml: the job fails,
    writing nothing, when more of the present inputs than that cannot be used.
    ``code_fingerprint``: :func:`medmix.store.inputs.source_fingerprint` of the rule's code inputs.
    Both are recorded in the metadata too, for ``medmix cache`` to tell a stale file.
    """
    view = read_input_view(inputs_path, [modality])
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} does not exist")
    settings = {
        "batch_size": default_batch_size(expert, runtime),
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
    sample_ids, values = view.sample_ids, view.inputs(modality)
    extra = {"dataset": view.dataset, "modality": modality, "kind": kind,
             "weights_fingerprint": folder_fingerprint(runtime.get("local_dir")),
             "max_failed_fraction": float(max_failed_fraction)}
    if code_fingerprint is not None:
        extra["code_fingerprint"] = code_fingerprint
    if shards > 1:
        rows = shard_rows(sample_ids, shards)[shard]
        sample_ids, values = [sample_ids[i] for i in rows], [values[i] for i in rows]
        extra.update(shard=shard, shards=shards,
                     input_fingerprint=input_fingerprint(sample_ids, values, kind, view.schema(modality)))
    else:
        extra["input_fingerprint"] = view.fingerprint(modality)
    log.info("dataset %s, modality %s (%s), expert %s, shard %d of %d, %d samples, batch size %d",
             view.dataset, modality, kind, expert, shard, shards, len(values), extractor.settings.batch_size)
    return run_extraction(
        extractor, sample_ids, values, out_path, extra_metadata=extra, max_failed_fraction=max_failed_fraction,
    )


def merge_job(inputs_path: str, modality: str, parts: list[str], out_path: str) -> dict[str, Any]:
    """Merge the shard parts of one feature file (in order) into ``out_path``, in the view's row
    order, checked against the view (:func:`medmix.store.shards.merge_parts`)."""
    view = read_input_view(inputs_path, [modality])
    meta = merge_parts(parts, view.sample_ids, view.inputs(modality), out_path, view.fingerprint(modality),
                       max_listed=MAX_FAILED_LISTED)
    log.info("dataset %s, modality %s, expert %s: merged %d parts, %d of %d samples present",
             view.dataset, modality, meta.get("extractor"), len(parts), meta["n_present"], meta["n"])
    return meta
