"""Runs: the rows of every table. A run is a registered fusion method, or a *variant* of one.

A variant (config ``variants.<name>``) is a registered method with a configuration: its own
``params`` (merged over ``training`` and ``method_params`` of the method), and optionally a
subset of the cached experts selected at fit time, by modality (``modalities``) and/or by
committee role (``roles``). Ablations (Table E7: no RAG experts, one modality only, a uniform
router) and subset sweeps are variants, so they read the same feature cache as the full method:
no copy of a dataset, no re-extraction. ``methods:`` in config lists run names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: A method or variant name is a path component and a Snakemake wildcard value: letters, digits, ``_``, ``+``, ``-``.
VARIANT_NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_+\-]*"
#: Every run name: a method or variant name, optionally ``@`` + a modality subset of the sweep
#: (:mod:`medmix.plan.sweep`, e.g. ``gbdt@frontal+note``); ``@`` occurs in no other name.
RUN_NAME_PATTERN = VARIANT_NAME_PATTERN + r"(@[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*)?"
#: A dataset, modality or demo-cohort name: a path component and a Snakemake wildcard value (the
#: Snakefile's ``wildcard_constraints``): letters, digits and ``_`` only (``+`` joins modalities in
#: sweep run names, ``-`` is not allowed by the wildcards).
NAME_PATTERN = r"[A-Za-z0-9_]+"
#: Folders under ``results/`` that are not datasets' (a dataset of that name would share them).
RESERVED_DATASET_NAMES = ("benchmarks", "costs", "figures", "knowledge", "tables")


@dataclass(frozen=True)
class RunSpec:
    """One run name -> the registered ``method`` that trains it and what it reads.

    ``modalities`` / ``roles`` are ``None`` for "all"; ``params`` override the method's settings.
    """

    name: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None

    @property
    def is_variant(self) -> bool:
        return self.name != self.method or bool(self.params) or self.modalities is not None or self.roles is not None


def run_spec(cfg: dict[str, Any], name: str) -> RunSpec:
    """The spec of run ``name``: a variant of ``cfg['variants']``, a registered method, or a sweep
    run ``<method or variant>@<modality>+...`` (that run restricted to the listed modalities)."""
    from medmix.plan.sweep import parse_sweep_name

    swept = parse_sweep_name(name)
    if swept is not None:
        base = run_spec(cfg, swept[0])
        return RunSpec(name=name, method=base.method, params=base.params, modalities=swept[1], roles=base.roles)
    variants = cfg.get("variants") or {}
    if name in variants:
        v = variants[name]
        return RunSpec(
            name=name, method=v["method"], params=dict(v.get("params") or {}),
            modalities=tuple(v["modalities"]) if v.get("modalities") is not None else None,
            roles=tuple(v["roles"]) if v.get("roles") is not None else None,
        )
    from medmix.methods import is_known_method, known_methods

    if not is_known_method(name):
        raise KeyError(f"unknown run {name!r}: neither a registered method ({', '.join(known_methods())}) "
                       f"nor a variant in config ({', '.join(sorted(variants)) or 'none declared'})")
    return RunSpec(name=name, method=name)


def check_run_name(name: str, where: str) -> None:
    if not re.fullmatch(VARIANT_NAME_PATTERN, name):
        raise ValueError(f"{where}: run name {name!r} must match {VARIANT_NAME_PATTERN} (it names result folders)")


def check_name(name: Any, what: str, where: str) -> None:
    """A dataset / modality / demo-cohort name must match :data:`NAME_PATTERN` (and a dataset's must
    not be a reserved ``results/`` folder); ``ValueError`` naming ``where`` otherwise."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{where}: {what} name {name!r} may hold only letters, digits and '_' ({NAME_PATTERN}): "
                         "it names result folders and is a Snakemake wildcard value")
    if what == "dataset" and name in RESERVED_DATASET_NAMES:
        raise ValueError(f"{where}: dataset name {name!r} is reserved (results/{name}/ holds the pipeline's own "
                         f"outputs; reserved: {', '.join(RESERVED_DATASET_NAMES)})")


def run_specs(cfg: dict[str, Any]) -> dict[str, RunSpec]:
    """Every run of ``cfg['methods']``, in config order."""
    return {name: run_spec(cfg, name) for name in cfg.get("methods", [])}


def select_committee(committee: dict[str, Any], spec: RunSpec, dataset: str) -> dict[str, Any]:
    """The fit / evaluate ``committee`` dict (modality -> committee + teacher) restricted to the run.

    A modality outside ``spec.modalities`` goes with its teacher; a committee member whose role is
    outside ``spec.roles`` is left out (the teacher stays: it is not a committee member). A
    modality left with no expert is dropped; a run left with no modality is an error.
    """
    out = {}
    for mod, entry in committee.items():
        if spec.modalities is not None and mod not in spec.modalities:
            continue
        members = [list(m) for m in entry["committee"] if spec.roles is None or m[1] in spec.roles]
        if members:
            out[mod] = {**entry, "committee": members}
    if not out:
        raise ValueError(
            f"run {spec.name!r} on dataset {dataset!r}: no expert left (modalities {list(spec.modalities or [])}, "
            f"roles {list(spec.roles or [])}; the dataset has {sorted(committee)} with roles "
            f"{sorted({m[1] for e in committee.values() for m in e['committee']})})"
        )
    return out


def run_seeds(cfg: dict[str, Any], dataset: str, run: str, protocol: str) -> list[int]:
    """The seeds a fit of ``run`` under train protocol ``protocol`` trains: the first
    ``missing_grid.n_seeds`` of ``seeds`` for the missing grid's own runs (:mod:`medmix.plan.missing_grid`),
    the first ``sweep.n_seeds`` for the sweep's subset runs (:mod:`medmix.plan.sweep`), all of ``seeds``
    for every other run (the tables' rows)."""
    from medmix.plan import missing_grid
    from medmix.plan.sweep import parse_sweep_name, sweep_seeds

    if missing_grid.is_grid_run(cfg, dataset, protocol):
        return missing_grid.grid_seeds(cfg)
    if parse_sweep_name(run) is not None:
        return sweep_seeds(cfg)
    return list(cfg["seeds"])
