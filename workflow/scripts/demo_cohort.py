"""Thin adapter: the ``demo_cohort`` rule -> medmix.demo.generate_cohort."""

import logging

from medmix.demo import generate_cohort
from medmix.pipeline import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
manifest = generate_cohort(
    sm.output[0], kind=sm.params.kind, n_patients=int(sm.params.n_patients), seed=int(sm.params.seed),
    shift=bool(sm.params.shift)
)
logging.getLogger("medmix.demo").info("wrote %s", manifest)
