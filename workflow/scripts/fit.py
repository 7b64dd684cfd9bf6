"""Thin adapter: the ``fit`` rule -> medmix.pipeline.fit.fit_job."""

import json

from medmix.config import expert_identity, training_params
from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.fit import fit_job
from medmix.protocols import Protocol

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
committee = json.loads(sm.params.committee)
names = {n for spec in committee.values() for n, _ in spec["committee"]}
names |= {spec["teacher"] for spec in committee.values() if spec.get("teacher")}
train_spec = dict(json.loads(sm.params.train_protocol))
fit_job(
    method=sm.wildcards.method,
    cohort_path=sm.input.cohort,
    committee=committee,
    identities={n: expert_identity(sm.config, n) for n in names},
    params=training_params(sm.config, sm.wildcards.method),
    seeds=json.loads(sm.params.seeds),
    train_protocol=Protocol(sm.wildcards.protocol, train_spec.pop("kind"), train_spec),
    test_protocols=json.loads(sm.params.test_protocols),
    externals={e: sm.input[f"external_cohort_{e}"] for e in json.loads(sm.params.external)},
    out_predictions=sm.output.predictions,
    out_curves=sm.output.curves,
    out_checkpoints=sm.output.checkpoints,
    out_info=sm.output.info,
)
