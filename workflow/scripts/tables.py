"""Thin adapter: the ``tables`` rule -> medmix.evaluation.tables."""

import json
import re

from medmix.evaluation.tables import collect, main_table_markdown, robustness_markdown
from medmix.pipeline import setup_logging
from medmix.store.atomic import atomic_path, write_text_atomic

setup_logging(snakemake.log[0])  # noqa: F821
sm = snakemake  # noqa: F821
metrics = collect(list(sm.input.predictions), json.loads(sm.params.tasks))
with atomic_path(sm.output.metrics) as tmp:
    metrics.to_csv(tmp, index=False)
seeds = json.loads(sm.params.seeds)
write_text_atomic(sm.output.main, main_table_markdown(metrics, seeds))
write_text_atomic(sm.output.robustness, robustness_markdown(metrics))
# Each dataset's summary (splits, prevalence, modality availability) next to the tables.
parts = [re.sub(r"^(#+) ", r"#\1 ", open(path).read(), flags=re.M) for path in sm.input.summaries]
write_text_atomic(sm.output.datasets, "# Datasets\n\n" + "\n\n".join(p.strip() for p in parts) + "\n")
