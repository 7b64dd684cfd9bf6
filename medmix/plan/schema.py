"""The configuration schema as the workflow validates it: ``medmix/schemas/config.schema.yaml``
(package data; ``workflow/schemas/config.schema.yaml`` links to it) plus, for every registered
dataset adapter that declares its own config keys (``register_adapter(config_keys=...)``), the
branch that accepts them on that adapter's datasets. So a new adapter is one module: its name and
its keys come from the registry, not from an edit of the schema file."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@cache
def _schema() -> dict[str, Any]:
    from medmix.datasets import known_adapters

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    branches = schema["definitions"]["dataset"].setdefault("allOf", [])
    for name, spec in known_adapters().items():
        if spec.config_keys:
            branches.append({"if": {"required": ["adapter"], "properties": {"adapter": {"const": name}}},
                             "then": {"properties": copy.deepcopy(spec.config_keys)}})
    return schema


def config_schema() -> dict[str, Any]:
    """The schema (a fresh copy) with the registered adapters' own keys."""
    return copy.deepcopy(_schema())
