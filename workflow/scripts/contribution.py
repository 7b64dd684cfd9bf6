"""Thin adapter: the ``contribution`` rule -> medmix.evaluation.contribution.write_outputs."""

import json

from medmix.evaluation.contribution import write_outputs
from medmix.pipeline import setup_logging
from medmix.pipeline.cpu_slots import claim_cpus

setup_logging(snakemake.log[0])  # noqa: F821
claim_cpus(1)
sm = snakemake  # noqa: F821
write_outputs(
    prediction_files=list(sm.input.predictions),
    plan=json.loads(sm.params.plan),
    tasks=json.loads(sm.params.tasks),
    seeds=json.loads(sm.params.seeds),
    out={k: getattr(sm.output, k) for k in
         ("sweep_md", "sweep_csv", "sweep_png", "contribution_md", "contribution_csv", "contribution_png")},
    permutations=int(sm.params.permutations),
    seed=int(sm.params.permutation_seed),
    runs=json.loads(sm.params.runs),
)
