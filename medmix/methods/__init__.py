"""Fusion-method registry: ``@register_method("name")`` on a :class:`FusionMethod` subclass.

Methods live in their own modules in this package. The registry discovers them itself: on the
first lookup (:func:`get_method_class`, :func:`create_method`, :func:`known_methods`) it imports
every module of the ``medmix.methods`` package once (``pkgutil.iter_modules``), so a new method
is a new module with a decorated class and nothing else. Importing ``medmix.methods`` alone
imports no method module.

A *family* (``@register_method("large_ref", family=True)``) is one class for a set of names
``<family>_<variant>`` (e.g. ``large_ref_note``): the lookup returns a subclass with
``name = "large_ref_note"`` and ``variant = "note"``, so each variant is its own method (its own
runs, checkpoints and table rows) while its code is the family's module.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from medmix.methods.base import FusionMethod, Prediction

_REGISTRY: dict[str, type[FusionMethod]] = {}
_FAMILIES: dict[str, type[FusionMethod]] = {}
_VARIANTS: dict[str, type[FusionMethod]] = {}
_DISCOVERED = False


def register_method(name: str, family: bool = False):
    def wrap(cls):
        if family:
            cls.name = f"{name}_<variant>"
            cls.family = name
            _FAMILIES[name] = cls
        else:
            cls.name = name
            _REGISTRY[name] = cls
        return cls

    return wrap


def _discover() -> None:
    """Import every module of this package once (each registers its methods on import)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")
    _DISCOVERED = True


def known_methods() -> list[str]:
    """Every registered method name; a family is listed as ``<family>_<variant>``."""
    _discover()
    return sorted([*_REGISTRY, *(f"{f}_<variant>" for f in _FAMILIES)])


def _variant(name: str) -> type[FusionMethod] | None:
    if name in _VARIANTS:
        return _VARIANTS[name]
    for family, cls in sorted(_FAMILIES.items(), key=lambda kv: -len(kv[0])):
        variant = name[len(family) + 1 :] if name.startswith(family + "_") else ""
        if variant:
            sub = type(f"{cls.__name__}_{variant}", (cls,), {"name": name, "variant": variant, "__module__": cls.__module__})
            _VARIANTS[name] = sub
            return sub
    return None


def get_method_class(name: str) -> type[FusionMethod]:
    if name not in _REGISTRY:
        _discover()
    cls = _REGISTRY.get(name) or _variant(name)
    if cls is None:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(known_methods())}")
    return cls


def is_known_method(name: str) -> bool:
    try:
        get_method_class(name)
    except KeyError:
        return False
    return True


def create_method(name: str, params: dict[str, Any]) -> FusionMethod:
    return get_method_class(name)(params)


__all__ = ["FusionMethod", "Prediction", "create_method", "get_method_class", "is_known_method", "known_methods",
           "register_method"]
