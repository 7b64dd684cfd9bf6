"""Thin adapter: the ``tables`` rule -> medmix.evaluation.tables_job."""

import json

from medmix.evaluation.tables_job import tables_job
from medmix.pipeline import setup_logging
from medmix.pipeline.cpu_slots import claim_cpus

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
held = claim_cpus(sm.threads)
named = ("main", "metrics", "robustness", "datasets", "labels", "patterns_md", "patterns_csv", "significance")
tables_job(
    prediction_files=list(sm.input.predictions),
    summaries=list(sm.input.summaries),
    tasks=json.loads(sm.params.tasks),
    seeds=json.loads(sm.params.seeds),
    protocols=json.loads(sm.params.protocols),
    run_methods=dict(json.loads(sm.params.run_methods)),
    dataset_order=json.loads(sm.params.datasets),
    out={k: getattr(sm.output, k) for k in named},
    paper_outputs=list(sm.output.paper),
    figure_outputs=list(sm.output.figures),
    cost_files=list(sm.input.costs),
    expert_costs=json.loads(sm.params.expert_costs),
    improvements=json.loads(sm.params.improvements),
    processes=held or sm.threads,
)
