"""Thin adapter: the ``bridge`` rule -> medmix.knowledge.jobs.bridge_job."""

from medmix.knowledge.jobs import bridge_job
from medmix.pipeline import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
name = sm.wildcards.bridge_model
settings = dict(sm.config.get("rag", {}).get("bridges", {}).get(name, {}))
bridge_job(sm.input.cohort, sm.wildcards.modality, name, sm.output[0], settings,
           paired_frontal=sm.params.paired_frontal or None)
