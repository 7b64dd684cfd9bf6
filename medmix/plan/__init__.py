"""The workflow layer: what a run plans from the configuration (load and validate it, the runs and
their seeds, the modality sweep and the missing grid, each job's code inputs) and the tools that
write it (``medmix init``, the configuration reference). The only part of ``medmix`` that knows
both stages (``extractors`` and the fusion packages)."""
