"""The default ``config.yaml`` as workflow tests start from it."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def default_config(*, extra_runs: bool = False) -> dict:
    """``config.yaml`` as a dict; without ``extra_runs`` the demo's additional runs (the E7
    variants, the modality sweep and CP-IMoE's missing grid) are off, so a test that sets its own
    ``methods`` runs exactly those."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    if not extra_runs:
        # Explicit empty lists, not empty sections: Snakemake merges a `--configfile` over the
        # Snakefile's `configfile:` key by key, so `{}` would leave the default's sections in place.
        cfg["variants"], cfg["sweep"], cfg["missing_grid"] = {}, {"methods": []}, {"methods": []}
    return cfg
