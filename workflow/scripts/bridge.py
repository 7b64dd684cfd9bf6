"""Thin adapter: the ``bridge`` rule -> extractors.knowledge.jobs.bridge_job."""

import json

from extractors.knowledge.jobs import bridge_job
from medmix.pipeline import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
name = sm.wildcards.bridge_model
settings = {**json.loads(sm.params.identity), **json.loads(sm.resources.bridge_runtime)}
bridge_job(sm.input.inputs, sm.wildcards.modality, name, sm.output[0], settings,
           paired_frontal=sm.params.paired_frontal or None)
