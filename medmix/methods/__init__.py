"""Fusion-method registry: ``@register_method("name")`` on a :class:`FusionMethod` subclass.

Methods live in their own modules and are imported lazily by :func:`create_method`.
"""

from __future__ import annotations

import importlib
from typing import Any

from medmix.methods.base import FusionMethod, Prediction

#: registry name -> module that defines it (imported on first use).
_MODULES = {
    "linear_probe": "medmix.methods.linear_probe",
    "meanavg": "medmix.methods.meanavg",
    "medmix": "medmix.methods.medmix",
    "medmix_nodistill": "medmix.methods.medmix",
    "medmix_paper": "medmix.methods.medmix",
}
_REGISTRY: dict[str, type[FusionMethod]] = {}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def known_methods() -> list[str]:
    return sorted(set(_MODULES) | set(_REGISTRY))


def get_method_class(name: str) -> type[FusionMethod]:
    if name not in _REGISTRY and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(known_methods())}")
    return _REGISTRY[name]


def create_method(name: str, params: dict[str, Any]) -> FusionMethod:
    return get_method_class(name)(params)


__all__ = ["FusionMethod", "Prediction", "create_method", "get_method_class", "known_methods", "register_method"]
