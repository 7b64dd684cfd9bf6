"""Thin adapter: the ``rag_index`` rule -> medmix.knowledge.jobs.index_job."""

from medmix.config import expert_identity, expert_runtime
from medmix.knowledge.jobs import index_job
from medmix.pipeline import set_threads, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
expert = sm.wildcards.encoder
index_job(expert, sm.input.kb, sm.output[0], identity=expert_identity(sm.config, expert),
          runtime=expert_runtime(sm.config, expert))
