"""Thin adapter: the ``moirai_features`` rule -> extractors.experts.moirai.write_worker_features."""

import json
import logging

from extractors.base import EMBEDDING_SETTINGS
from extractors.experts.moirai import write_worker_features
from extractors.registry import create_extractor
from medmix.pipeline import setup_logging
from medmix.store.inputs import read_input_view

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
identity = {key: json.loads(sm.params[key]) for key in EMBEDDING_SETTINGS}
modality = sm.wildcards.modality
view = read_input_view(sm.input.inputs, [modality])
extractor = create_extractor("moirai", {**identity, "input_schema": view.schema(modality)})
values, kind = view.inputs(modality), view.kinds[modality]
n = write_worker_features(extractor, view.sample_ids, values, sm.input.embeddings, sm.output.features,
                          extra_metadata={"dataset": view.dataset, "modality": modality, "kind": kind,
                                          "input_fingerprint": view.fingerprint(modality)})
failed = json.loads(open(sm.input.failures).read())
logging.getLogger("medmix.extract").info(
    "expert moirai: %d samples, %d present, %d failed (unusable input)", len(view.sample_ids), n, len(failed))
