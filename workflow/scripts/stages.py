"""Thin adapter: the ``stages`` rule -> medmix.pipeline.stage.stages_job."""

from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.stage import stages_job
from medmix.plan.config import training_job_inputs

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
stages_job(method=sm.wildcards.method, **training_job_inputs(sm), out_dir=sm.output.stages)
