"""Thin adapter: the ``cpimoe_tables`` rule -> medmix.evaluation.cpimoe_tables.tables_job."""

import json

from medmix.evaluation.cpimoe_tables import tables_job
from medmix.pipeline import setup_logging
from medmix.pipeline.cpu_slots import claim_cpus

setup_logging(snakemake.log[0])  # noqa: F821
claim_cpus(1)
sm = snakemake  # noqa: F821
figures = dict(zip(json.loads(sm.params.figure_keys), sm.output.figures, strict=True))
tables_job(
    prediction_files=list(sm.input.predictions),
    tasks=json.loads(sm.params.tasks),
    cells=json.loads(sm.params.cells),
    mode=sm.params.mode,
    seeds=json.loads(sm.params.seeds),
    figure_methods=json.loads(sm.params.figure_methods),
    figures=figures,
    complexity=json.loads(sm.params.complexity),
    batch_size=int(sm.params.batch_size),
    out={k: getattr(sm.output, k) for k in ("table_s3", "per_class", "metrics", "gates", "table_s2")},
)
