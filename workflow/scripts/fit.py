"""Thin adapter: the ``fit`` rule -> medmix.pipeline.fit.fit_job."""

import json

from medmix.cohort import read_cohort_schemas
from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.fit import fit_job
from medmix.pipeline.stage import stage_folders
from medmix.plan.config import with_expected_dims
from medmix.protocols import Protocol

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
fit_job(
    method=sm.params.method,
    run=sm.wildcards.method,
    cohort_path=sm.input.cohort,
    committee=json.loads(sm.params.committee),
    features=dict(zip(json.loads(sm.params.feature_keys), sm.input.features, strict=True)),
    identities=with_expected_dims(json.loads(sm.params.identities), json.loads(sm.params.feature_keys),
                                  read_cohort_schemas(sm.input.cohort)),
    params=json.loads(sm.params.training),
    seeds=json.loads(sm.params.seeds),
    train_protocol=Protocol.from_spec(sm.wildcards.protocol, json.loads(sm.params.train_protocol)),
    out_model=sm.output.model,
    out_curves=sm.output.curves,
    out_info=sm.output.info,
    pretrained=stage_folders(list(sm.input.pretrained)),
)
