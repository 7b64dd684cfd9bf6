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

from medmix.methods.base import FusionMethod, Prediction
from medmix.methods.registry import (
    create_method,
    get_method_class,
    is_known_method,
    known_methods,
    load_method,
    register_method,
)

__all__ = ["FusionMethod", "Prediction", "create_method", "get_method_class", "is_known_method", "known_methods",
           "load_method", "register_method"]
