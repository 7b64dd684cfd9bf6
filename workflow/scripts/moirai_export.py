"""Thin adapter: the ``moirai_export`` rule -> extractors.moirai.export_series."""

import json

from extractors.moirai import export_series
from extractors.registry import create_extractor
from medmix.atomic import write_text_atomic
from medmix.cohort import read_cohort
from medmix.config import expert_identity, expert_runtime
from medmix.pipeline import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
ident = expert_identity(sm.config, "moirai")
settings = {**expert_runtime(sm.config, "moirai"), **{k: ident[k] for k in ("model_id", "revision", "preprocessing")}}
cohort = read_cohort(sm.input.cohort)
failed = export_series(create_extractor("moirai", settings), cohort.sample_ids, cohort.inputs(sm.wildcards.modality),
                       sm.output.series)
write_text_atomic(sm.output.failures, json.dumps(failed, indent=2))
