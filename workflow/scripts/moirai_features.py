"""Thin adapter: the ``moirai_features`` rule -> extractors.moirai.write_worker_features."""

import json
import logging

from extractors.moirai import write_worker_features
from extractors.registry import create_extractor
from medmix.cohort import read_cohort
from medmix.config import expert_identity
from medmix.pipeline import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
ident = expert_identity(sm.config, "moirai")
extractor = create_extractor("moirai", {k: ident[k] for k in ("model_id", "revision", "preprocessing")})
cohort = read_cohort(sm.input.cohort)
modality = sm.wildcards.modality
n = write_worker_features(extractor, cohort.sample_ids, cohort.inputs(modality), sm.input.embeddings, sm.output.features,
                          extra_metadata={"dataset": cohort.name, "modality": modality, "kind": cohort.modalities[modality]})
failed = json.loads(open(sm.input.failures).read())
logging.getLogger("medmix.extract").info(
    "expert moirai: %d samples, %d present, %d failed (unusable input)", len(cohort.sample_ids), n, len(failed))
