"""Thin adapter: the ``prepare_dataset`` rule -> medmix.datasets.build_cohort, input view + summary."""

import json
import logging

from medmix.cohort import write_cohort
from medmix.datasets import build_cohort
from medmix.datasets.summary import write_summary
from medmix.pipeline import setup_logging
from medmix.store.inputs import write_input_view

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
cohort = build_cohort(sm.wildcards.dataset, json.loads(sm.params.dataset_json), ".")
write_cohort(cohort, sm.output.cohort)
write_input_view(sm.output.inputs, cohort.input_view())
summary = write_summary(cohort, sm.output.summary_json, sm.output.summary_md)
log = logging.getLogger("medmix.datasets")
log.info("dataset %s: %d samples", cohort.name, len(cohort.frame))
for modality, info in summary["absent_files"].items():
    log.warning("dataset %s: %d %s file(s) absent (counted as missing)", cohort.name, info["count"], modality)
for modality, info in summary["unusable_files"].items():
    log.warning("dataset %s: %d %s file(s) unusable (counted as missing)", cohort.name, info["count"], modality)
    for item in info["files"]:
        log.warning("dataset %s: modality %s, sample %s recorded as missing: %s", cohort.name, modality,
                    item["sample_id"], item["reason"])
for warning in cohort.extra.get("warnings", []):
    log.warning("dataset %s: %s", cohort.name, warning)
