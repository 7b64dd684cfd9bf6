"""The fusion-method registry: ``@register_method("name")``, discovery, the factory and
:func:`load_method` (a saved method rebuilt by its registered name). See :mod:`medmix.methods`."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

from medmix.methods.base import METHOD_FORMAT, FusionMethod

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
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        importlib.import_module(f"medmix.methods.{info.name}")
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
            sub = type(f"{cls.__name__}_{variant}", (cls,),
                       {"name": name, "variant": variant, "__module__": cls.__module__})
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


def load_method(folder: str | Path) -> FusionMethod:
    """A predict-only method rebuilt from a folder written by :meth:`FusionMethod.save`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / "method.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no method.json (not a saved fusion method; rerun its fit job)")
    info = json.loads(meta_path.read_text())
    if info.get("format") != METHOD_FORMAT:
        raise ValueError(f"{meta_path}: format {info.get('format')!r}, expected {METHOD_FORMAT!r}")
    method = get_method_class(info["method"])(info["params"])
    method.seeds = [int(s) for s in info["seeds"]]
    method.selection = list(info.get("selection", []))
    states = []
    for seed in method.seeds:
        path = folder / f"seed{seed}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint of seed {seed} listed in {meta_path} is missing")
        states.append(load_file(str(path)))
    method.restore(info["settings"], states)
    return method
