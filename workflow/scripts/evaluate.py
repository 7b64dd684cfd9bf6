"""Thin adapter: the ``evaluate`` rule -> medmix.pipeline.fit.evaluate_job."""

import json

from medmix.cohort import read_cohort_schemas
from medmix.config import with_expected_dims
from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.fit import evaluate_job

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
evaluate_job(
    dataset=sm.wildcards.dataset,
    run=sm.wildcards.method,
    cohort=sm.wildcards.cohort,
    train_protocol=sm.wildcards.protocol,
    model_dir=sm.input.model,
    cohort_path=sm.input.cohort,
    committee=json.loads(sm.params.committee),
    features=dict(zip(json.loads(sm.params.feature_keys), sm.input.features, strict=True)),
    identities=with_expected_dims(json.loads(sm.params.identities), json.loads(sm.params.feature_keys),
                                  read_cohort_schemas(sm.input.cohort)),
    test_protocols=json.loads(sm.params.test_protocols),
    out_predictions=sm.output.predictions,
)
