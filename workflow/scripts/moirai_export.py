"""Thin adapter: the ``moirai_export`` rule -> extractors.experts.moirai.export_series."""

import json

from extractors.base import EMBEDDING_SETTINGS
from extractors.experts.moirai import export_series
from extractors.registry import create_extractor
from medmix.pipeline import setup_logging
from medmix.store.atomic import write_text_atomic
from medmix.store.inputs import read_input_view

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
identity = {key: json.loads(sm.params[key]) for key in EMBEDDING_SETTINGS}
view = read_input_view(sm.input.inputs, [sm.wildcards.modality])
settings = {**json.loads(sm.resources.expert_runtime), **identity, "input_schema": view.schema(sm.wildcards.modality)}
failed = export_series(create_extractor("moirai", settings), view.sample_ids, view.inputs(sm.wildcards.modality),
                       sm.output.series)
write_text_atomic(sm.output.failures, json.dumps(failed, indent=2))
