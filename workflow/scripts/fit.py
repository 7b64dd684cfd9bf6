"""Thin adapter: the ``fit`` rule -> medmix.pipeline.fit.fit_job."""

from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.fit import fit_job
from medmix.pipeline.stage import stage_folders
from medmix.plan.config import training_job_inputs

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
fit_job(
    method=sm.params.method,
    run=sm.wildcards.method,
    **training_job_inputs(sm),
    out_model=sm.output.model,
    out_curves=sm.output.curves,
    out_info=sm.output.info,
    pretrained=stage_folders(list(sm.input.pretrained)),
)
