"""Dataset adapters: each turns a dataset's own layout into the normalised :class:`~medmix.cohort.Cohort`.

``build_cohort(name, cfg, base_dir)`` dispatches on ``cfg["adapter"]``; adapters register in
``ADAPTERS`` (module path + function name, imported lazily).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from medmix.cohort import Cohort

ADAPTERS: dict[str, str] = {
    "manifest": "medmix.datasets.manifest:load_manifest_dataset",
    "demo": "medmix.datasets.manifest:load_manifest_dataset",
    "iu_xray": "medmix.datasets.iu_xray:load_iu_xray",
    "mimic_iv_mm": "medmix.datasets.mimic:load_mimic_iv_mm",
    "mimic_iii": "medmix.datasets.mimic:load_mimic_iii",
    "mmist_ccrcc": "medmix.datasets.mmist_ccrcc:load_mmist_ccrcc",
}


def build_cohort(name: str, cfg: dict[str, Any], base_dir: str | Path = ".") -> Cohort:
    adapter = cfg.get("adapter", "manifest")
    if adapter not in ADAPTERS:
        raise KeyError(f"dataset {name!r}: unknown adapter {adapter!r}; known: {sorted(ADAPTERS)}")
    module, func = ADAPTERS[adapter].split(":")
    return getattr(importlib.import_module(module), func)(name, cfg, Path(base_dir))
