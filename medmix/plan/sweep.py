"""The modality-combination sweep: one run per (method, modality subset) from the same cache.

Config (``sweep:``; off unless ``methods`` lists something)::

    sweep:
      methods: [gbdt, medmix]    # registered methods or variants (a variant may not restrict modalities)
      subsets: all               # or a list, e.g. [[note], [frontal, note]]
      datasets: [demo_openi]     # default: every development dataset
      permutations: 64           # Shapley orderings sampled beyond 6 modalities
      permutation_seed: 0
      n_seeds: 1                 # the subset runs train the first n of `seeds` (default: all)

``subsets: all`` is every non-empty subset of a dataset's modalities up to 6 modalities (what the
exact Shapley values need) and, beyond 6, the subsets the sampled orderings visit
(:func:`required_subsets`). A listed subset applies to every swept
dataset that has all its modalities. The full set of a dataset is the method's own run (its name
is the method's), so the sweep adds no duplicate of it. The subset runs train the first
``n_seeds`` of the top-level ``seeds`` (default: all); the subset scores and Shapley values use the
seeds every subset's run has (:mod:`medmix.evaluation.contribution` intersects them).

Run names: ``<method>@<modality>+<modality>...`` (modalities sorted), e.g. ``gbdt@frontal+note``:
``@`` and ``+`` cannot occur in a method or modality name (``[A-Za-z0-9_]+``), are plain
characters in paths, Snakemake wildcards and the shell, so a name parses back unambiguously.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Up to this many modalities the Shapley values are exact (2^M − 1 subsets); beyond, sampled.
EXACT_MAX = 6
SUBSET_SEP = "+"


def subset_label(subset) -> str:
    """Canonical name of a subset: its modalities sorted, joined by ``+`` (``∅`` for none)."""
    return SUBSET_SEP.join(sorted(subset)) or "∅"


def sampled_orderings(modalities: Sequence[str], n: int, seed: int) -> list[tuple[str, ...]]:
    """``n`` orderings of ``modalities`` drawn uniformly with a seeded generator (sorted input: reproducible)."""
    rng = np.random.default_rng(seed)
    mods = sorted(modalities)
    return [tuple(mods[i] for i in rng.permutation(len(mods))) for _ in range(n)]


def required_subsets(modalities: Sequence[str], permutations: int = 64, seed: int = 0) -> list[frozenset[str]]:
    """The non-empty subsets whose scores the Shapley values need: all of them up to
    :data:`EXACT_MAX` modalities, else the prefixes of the sampled orderings (sorted by size, name)."""
    mods = sorted(modalities)
    if len(mods) <= EXACT_MAX:
        subsets = {frozenset(c) for k in range(1, len(mods) + 1) for c in itertools.combinations(mods, k)}
    else:
        subsets = {frozenset(o[:k]) for o in sampled_orderings(mods, permutations, seed)
                   for k in range(1, len(mods) + 1)}
    return sorted(subsets, key=lambda s: (len(s), sorted(s)))


#: Separates a sweep run's base run from its subset (the wildcard pattern: :data:`medmix.plan.runs.RUN_NAME_PATTERN`).
RUN_SEP = "@"


def sweep_run_name(method: str, subset) -> str:
    return f"{method}{RUN_SEP}{subset_label(subset)}"


def parse_sweep_name(name: str) -> tuple[str, tuple[str, ...]] | None:
    """``("gbdt", ("frontal", "note"))`` for ``gbdt@frontal+note``; ``None`` for a name without ``@``."""
    if RUN_SEP not in name:
        return None
    method, subset = name.split(RUN_SEP, 1)
    return method, tuple(subset.split(SUBSET_SEP))


def sweep_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"methods": [], "subsets": "all", "permutations": 64, "permutation_seed": 0, **cfg.get("sweep", {})}


def sweep_seeds(cfg: dict[str, Any]) -> list[int]:
    """Seeds of the sweep's subset runs: the first ``sweep.n_seeds`` of ``seeds`` (default: all). The
    full set's run is the method's own and trains every seed; the scores use the seeds both have."""
    n = cfg.get("sweep", {}).get("n_seeds")
    return list(cfg["seeds"]) if n is None else list(cfg["seeds"])[: int(n)]


def swept_datasets(cfg: dict[str, Any]) -> list[str]:
    sweep = sweep_settings(cfg)
    if "datasets" in sweep:
        return list(sweep["datasets"])
    return [n for n, d in cfg["datasets"].items() if d.get("role", "development") == "development"]


def sweep_plan(cfg: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> method -> ``{"modalities": [...], "runs": {subset label: run name}}`` (the full
    set's run is the method's own; empty when the sweep is off)."""
    sweep = sweep_settings(cfg)
    plan: dict[str, dict[str, dict[str, Any]]] = {}
    if not sweep["methods"]:
        return plan
    for dataset in swept_datasets(cfg):
        mods = sorted(cfg["datasets"][dataset]["modalities"])
        full = frozenset(mods)
        if sweep["subsets"] == "all":
            subsets = required_subsets(mods, sweep["permutations"], sweep["permutation_seed"])
        else:
            subsets = sorted({frozenset(s) for s in sweep["subsets"] if set(s) <= full} | {full},
                             key=lambda s: (len(s), sorted(s)))
        plan[dataset] = {
            method: {"modalities": mods,
                     "runs": {subset_label(s): method if s == full else sweep_run_name(method, s) for s in subsets}}
            for method in sweep["methods"]
        }
    return plan


def sweep_jobs(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """``(dataset, run name)`` of every run the sweep adds (the methods' own full runs excluded)."""
    return [(d, run) for d, methods in sweep_plan(cfg).items() for spec in methods.values()
            for run in spec["runs"].values() if RUN_SEP in run]


def _hint(word: str, options) -> str:
    import difflib

    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


def check_sweep(cfg: dict[str, Any]) -> None:
    """Semantic checks of ``sweep:`` after the schema; ``ValueError`` naming the key (the config
    check turns it into a ``ConfigError``)."""
    from medmix.methods import is_known_method, known_methods

    sweep = sweep_settings(cfg)
    variants = cfg.get("variants") or {}
    for m in sweep["methods"]:
        if m in variants:
            if variants[m].get("modalities") is not None:
                raise ValueError(f"config key `sweep.methods`: variant {m!r} restricts its modalities; the sweep "
                                 "chooses the modalities (sweep its method or a variant without `modalities`)")
        elif not is_known_method(m):
            raise ValueError(f"config key `sweep.methods`: unknown method or variant {m!r}"
                             f"{_hint(m, [*known_methods(), *variants])}; known: {known_methods()}")
    if not sweep["methods"]:
        return  # off: its other keys (e.g. the default's datasets under a user's config) are unused
    if "none" not in cfg.get("protocols", {}).get("train", {"none": {}}):
        raise ValueError("config key `sweep`: the sweep scores clean runs, so `protocols.train` needs a protocol "
                         "named `none` ({kind: none})")
    development = [n for n, d in cfg["datasets"].items() if d.get("role", "development") == "development"]
    for d in sweep.get("datasets", []):
        if d not in development:
            raise ValueError(f"config key `sweep.datasets`: {d!r} is not a development dataset"
                             f"{_hint(d, development)}; development datasets: {development}")
    if sweep["subsets"] != "all":
        known = {m for d in swept_datasets(cfg) for m in cfg["datasets"][d]["modalities"]}
        for subset in sweep["subsets"]:
            unknown = [m for m in subset if m not in known]
            if unknown:
                raise ValueError(f"config key `sweep.subsets`: {subset} names {unknown[0]!r}, a modality of no swept "
                                 f"dataset{_hint(unknown[0], known)}; modalities: {sorted(known)}")
            if not any(set(subset) <= set(cfg["datasets"][d]["modalities"]) for d in swept_datasets(cfg)):
                raise ValueError(f"config key `sweep.subsets`: no swept dataset has all of {subset}")
