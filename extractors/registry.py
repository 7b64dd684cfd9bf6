"""Decorator registry of expert extractors.

Each expert module (``extractors/experts/``: every module there registers at least one expert,
and nothing else does) declares an :class:`ExpertSpec` with its own metadata and registers its
extractor class with :func:`register_expert`. Discovery imports every module of
``extractors.experts``; modules import their heavy libraries lazily (inside ``load``), so
enumerating the registry stays cheap and a job for one expert never pulls in another expert's
dependencies.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

from extractors.base import Extractor
from extractors.spec import ExpertSpec  # experts import it from here too

_REGISTRY: dict[str, type[Extractor]] = {}
_DISCOVERED = False


def register_expert(spec: ExpertSpec):
    """Class decorator: attach ``spec`` to an :class:`Extractor` subclass and register it."""

    def wrap(cls):
        if spec.name in _REGISTRY and _REGISTRY[spec.name] is not cls:
            raise ValueError(f"expert {spec.name!r} registered twice ({_REGISTRY[spec.name]} and {cls})")
        cls.spec = spec
        _REGISTRY[spec.name] = cls
        return cls

    return wrap


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    from extractors import experts

    for info in pkgutil.iter_modules(experts.__path__, prefix="extractors.experts."):
        importlib.import_module(info.name)
    _DISCOVERED = True


def list_experts() -> list[str]:
    """Names of every registered expert, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_expert_class(name: str) -> type[Extractor]:
    """The extractor class registered under ``name``; unknown names list the known ones."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown expert {name!r}; known experts: {', '.join(sorted(_REGISTRY))}") from None


def get_spec(name: str) -> ExpertSpec:
    return get_expert_class(name).spec


def create_extractor(name: str, settings: dict[str, Any] | None = None) -> Extractor:
    """Factory: instantiate the extractor ``name`` with runtime ``settings`` (not yet loaded)."""
    return get_expert_class(name)(settings or {})


def extra_source_files(name: str) -> list[str]:
    """Absolute paths of the ``extra_sources`` the expert's class (or a base) declares."""
    root = Path(__file__).resolve().parent
    files: list[str] = []
    for klass in inspect.getmro(get_expert_class(name)):
        for extra in vars(klass).get("extra_sources", ()):
            path = root / extra
            if not path.is_file():
                raise FileNotFoundError(f"expert {name!r}: extra source {extra!r} not found in {root}")
            if str(path) not in files:
                files.append(str(path))
    return files


def expert_module(name: str) -> str:
    """The module that registers expert ``name`` (the root of its code closure)."""
    return get_expert_class(name).__module__
