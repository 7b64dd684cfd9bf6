"""Thin adapter: the ``extract`` rule -> medmix.pipeline.extract.extract_job."""

from medmix.config import expert_identity, expert_runtime
from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.extract import extract_job

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
expert = sm.wildcards.expert
options = {k: v for k, v in sm.input.items() if k not in ("cohort", "code")}
extract_job(
    cohort_path=sm.input.cohort,
    modality=sm.wildcards.modality,
    expert=expert,
    out_path=sm.output.features,
    identity=expert_identity(sm.config, expert),
    runtime=expert_runtime(sm.config, expert),
    options=options,
)
