"""Thin adapter: the ``extract`` rule -> extractors.job.extract_job."""

import json

from extractors.base import EMBEDDING_SETTINGS
from extractors.job import extract_job
from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.malloc import tune_malloc
from medmix.plan.code_closure import REPO
from medmix.store.inputs import source_fingerprint

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
tune_malloc()
options = {k: v for k, v in sm.input.items() if k not in ("inputs", "code")}
shard = {"shard": int(sm.wildcards.shard), "shards": int(sm.wildcards.shards)} if "shard" in sm.wildcards.keys() else {}
extract_job(
    inputs_path=sm.input.inputs,
    modality=sm.wildcards.modality,
    expert=sm.wildcards.expert,
    out_path=sm.output.features,
    identity={key: json.loads(sm.params[key]) for key in EMBEDDING_SETTINGS},
    runtime=json.loads(sm.resources.expert_runtime),
    options=options,
    max_failed_fraction=float(sm.params.max_failed_fraction),
    code_fingerprint=source_fingerprint(list(sm.input.code), REPO),
    **shard,
)
