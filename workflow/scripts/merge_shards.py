"""Thin adapter: the ``merge_shards`` rule -> extractors.job.merge_job."""

from extractors.job import merge_job
from medmix.pipeline import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
merge_job(inputs_path=sm.input.inputs, modality=sm.wildcards.modality, parts=list(sm.input.parts),
          out_path=sm.output.features)
