"""The deterministic synthetic demo cohort: the embedded default of the pipeline."""

from __future__ import annotations

from medmix.demo.generate import generate_cohort

__all__ = ["generate_cohort"]
