# Helpers of the extraction rules (extract.smk): resources, shard plans and inputs.
import os

from medmix.config import expert_shards, extraction_resources
from medmix.store.inputs import input_fingerprint
from medmix.store.shards import part_path, shard_rows

#: Experts whose extraction is split into shards (merge_shards writes their feature files).
SHARDED_EXPERTS = sorted({e for _, _, e in EXTRACTION_JOBS if expert_shards(config, e) > 1})


def extract_resource(key):
    """One resource of an extraction job of the wildcard's expert (extraction_resources: the
    registry's declaration, then config `resources.extract`, then `extraction.experts.<name>`)."""

    def lookup(wildcards):
        return extraction_resources(config, wildcards.expert)[key]

    return lookup


def extract_threads(wildcards):
    return extraction_resources(config, wildcards.expert)["threads"]


_SHARD_FINGERPRINTS = {}


def shard_fingerprints(dataset, modality, shards):
    """Input fingerprint of every shard of one modality (one pass over its files, cached per view)."""
    view = current_view(dataset)  # waits for the checkpoint where needed
    stamp = "source" if dataset in _SOURCE_VIEWS else os.stat(inputs_path(dataset)).st_mtime_ns
    key = (dataset, modality, shards, stamp)
    if key not in _SHARD_FINGERPRINTS:
        ids, values, kind, schema = view.sample_ids, view.inputs(modality), view.kinds[modality], view.schema(modality)
        _SHARD_FINGERPRINTS[key] = [
            input_fingerprint([ids[i] for i in rows], [values[i] for i in rows], kind, schema)
            for rows in shard_rows(ids, shards)
        ]
    return _SHARD_FINGERPRINTS[key]


def shard_fingerprint_param(wildcards):
    return shard_fingerprints(wildcards.dataset, wildcards.modality, int(wildcards.shards))[int(wildcards.shard)]


def shard_view_input(wildcards):
    """The input view, `ancient` while the part was computed from the shard's current inputs
    (so an edit of another shard's input file, a label or a split reruns nothing here)."""
    fingerprint = shard_fingerprint_param(wildcards)
    path = inputs_path(wildcards.dataset)
    return ancient(path) if recorded_fingerprint(shard_part(wildcards)) == fingerprint else path


def shard_part(wildcards):
    return part_path(wildcards.dataset, wildcards.modality, wildcards.expert, int(wildcards.shard), int(wildcards.shards))


def shard_parts(wildcards):
    n = expert_shards(config, wildcards.expert)
    return [part_path(wildcards.dataset, wildcards.modality, wildcards.expert, k, n) for k in range(n)]
