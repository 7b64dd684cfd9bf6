"""Thin adapter: the ``kb_ingest`` rule -> extractors.knowledge.jobs.kb_job."""

from extractors.knowledge.jobs import kb_job
from medmix.pipeline import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
kb_job(sm.input.source, sm.output[0], language=sm.params.language)
