"""Dataset adapters: each turns a dataset's own layout into the normalised :class:`~medmix.cohort.Cohort`.

An adapter is one module of this package with a loader decorated by :func:`register_adapter`,
which also declares what the workflow must know before any cohort exists: the modalities the
adapter provides (``modalities(cfg) -> {modality: kind}``; none for adapters whose config lists
them, like ``manifest``), its default selection of them, and its labels (``labels(cfg)``). The
registry discovers the modules itself (every module of the package is imported on the first
lookup), so a new adapter is a new module and nothing else: its own config keys are declared
with it (``config_keys``; the built-in adapters' are the schema's ``definitions.adapter_<name>``;
docs/datasets.md, "Adding an adapter").
:func:`build_cohort` dispatches on ``cfg["adapter"]``; :mod:`medmix.datasets.declared` answers
the planning questions from the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmix.cohort import Cohort

Loader = Callable[[str, dict[str, Any], Path], Cohort]


@dataclass(frozen=True)
class AdapterSpec:
    """A registered adapter: its loader and what it declares about the cohorts it builds."""

    name: str
    load: Loader
    #: ``cfg -> {modality: kind}`` the adapter provides under its options; None: the config lists them.
    modalities: Callable[[dict[str, Any]], dict[str, str]] | None = None
    #: ``cfg -> label names``; None: the config's ``labels`` (or ``classes`` for multi-class tasks).
    labels: Callable[[dict[str, Any]], list[str]] | None = None
    #: Modalities built when the config lists none (None: every one the adapter provides).
    default_selection: tuple[str, ...] | None = None
    #: JSON-schema properties of the adapter's own dataset keys (``datasets.<name>.<key>``), checked
    #: with the config and listed in docs/configuration.md (:mod:`medmix.plan.schema`); None: the
    #: adapter reads only the common keys, or its keys are ``definitions.adapter_<name>`` of the schema file.
    config_keys: dict[str, dict[str, Any]] | None = None

    @property
    def module(self) -> str:
        return self.load.__module__


_ADAPTERS: dict[str, AdapterSpec] = {}
_DISCOVERED = False


def register_adapter(name: str, *, modalities=None, labels=None, default_selection: tuple[str, ...] | None = None,
                     config_keys: dict[str, dict[str, Any]] | None = None):
    """Decorator of an adapter's loader ``(name, cfg, base_dir) -> Cohort``, registering it as ``name``."""

    def wrap(load: Loader) -> Loader:
        _ADAPTERS[name] = AdapterSpec(name, load, modalities, labels, default_selection, config_keys)
        return load

    return wrap


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")
    _DISCOVERED = True


def known_adapters() -> dict[str, AdapterSpec]:
    """Every registered adapter by name."""
    _discover()
    return dict(sorted(_ADAPTERS.items()))


def get_adapter(name: str) -> AdapterSpec:
    adapters = known_adapters()
    if name not in adapters:
        raise KeyError(f"unknown adapter {name!r}; known: {sorted(adapters)}")
    return adapters[name]


def build_cohort(name: str, cfg: dict[str, Any], base_dir: str | Path = ".") -> Cohort:
    adapter = cfg.get("adapter", "manifest")
    try:
        spec = get_adapter(adapter)
    except KeyError as err:
        raise KeyError(f"dataset {name!r}: {err.args[0]}") from None
    return spec.load(name, cfg, Path(base_dir))
