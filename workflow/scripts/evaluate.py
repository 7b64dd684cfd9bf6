"""Thin adapter: an ``evaluate_<dataset>`` rule -> medmix.pipeline.fit.evaluate_dataset_job."""

import json

from medmix.cohort import read_cohort_schemas
from medmix.pipeline import set_threads, setup_logging
from medmix.pipeline.fit import evaluate_dataset_job
from medmix.plan.config import with_expected_dims

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
set_threads(sm.threads)
models, cohorts, features = set(sm.input.models), set(sm.input.cohorts), set(sm.input.features)
predictions = set(sm.output.predictions)
runs = []
for spec in json.loads(sm.params.plan):
    # The plan names the rule's own inputs and outputs; a path outside them is a workflow bug.
    if spec["model_dir"] not in models:
        raise ValueError(f"evaluation plan: {spec['model_dir']} is not an input of this rule")
    entries = []
    for c in spec["cohorts"]:
        paths = dict(zip(c["feature_keys"], c["features"], strict=True))
        unknown = [p for p in [c["cohort_path"], c["out"], *paths.values()]
                   if p not in cohorts | features | predictions]
        if unknown:
            raise ValueError(f"evaluation plan: {unknown[:3]} are not inputs / outputs of this rule")
        identities = with_expected_dims(c["identities"], c["feature_keys"], read_cohort_schemas(c["cohort_path"]))
        entries.append({**c, "features": paths, "identities": identities})
    runs.append({**spec, "cohorts": entries})
evaluate_dataset_job(dataset=sm.params.dataset, runs=runs, out_costs=sm.output.costs)
