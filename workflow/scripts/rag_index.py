"""Thin adapter: the ``rag_index`` rule -> extractors.knowledge.jobs.index_job."""

import json

from extractors.knowledge.jobs import index_job
from medmix.pipeline import set_threads, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
expert = sm.wildcards.encoder
index_job(expert, sm.input.kb, sm.output[0], identity=json.loads(sm.params.expert_identity),
          runtime=json.loads(sm.resources.expert_runtime))
