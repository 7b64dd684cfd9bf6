"""The configuration a run uses: ``config.yaml`` with the ``--configfile`` overlays on top.

Snakemake merges each ``--configfile`` over the Snakefile's ``configfile: "config.yaml"`` key by
key (mappings merged recursively, lists and scalars replaced): an overlay can add and change keys,
never remove one. An overlay describing your own cohort would then also inherit the demo's
datasets, its generated cohorts, its sweep over ``demo_openi`` and its test protocols that drop
``frontal`` and ``note``. :func:`effective_config` is the one rule both the workflow
(``workflow/rules/common.smk``) and ``medmix info`` apply:

- With ``include_demo: auto`` (the default) and an overlay that declares a dataset the base does
  not have, the datasets are the overlays' own: the base's other datasets are not inherited (a
  dataset the base has too is the base's entry with the overlays' merged over it), nor its
  ``demo`` cohorts that no remaining dataset reads. What the base says that names what the
  overlays' datasets lack is left out as well, where an overlay does not say it itself:

  - ``sweep.datasets`` entries naming absent datasets (a sweep left with none of its datasets is
    off unless an overlay gives ``sweep.methods``; it then sweeps every development dataset), and
    ``sweep.subsets`` entries naming absent modalities;
  - protocols (``protocols.train`` / ``protocols.test``) naming an absent modality
    (``modality`` or ``modalities``);
  - variants that would leave a development dataset with no committee expert (e.g. a role its
    committees lack, a modality it does not have), unless an overlay's run list names them;
  - runs of the inherited ``methods`` / ``sweep.methods`` lists that cannot run on the datasets:
    those variants, and ``large_ref_<modality>`` where no development dataset's ``<modality>``
    has a teacher;
  - the missing grid, unless a development dataset declares ``modality_roles``.

- With ``include_demo: true``, or when no overlay declares a new dataset (``config/quick.yaml``
  declares none; an overlay may adjust the demo's), the result is exactly Snakemake's merge, so
  ``snakemake --cores 8 all`` and such overlays run the demo as before.

Pure functions on plain dicts (:func:`effective_config`); :func:`load_yaml` and
:func:`workflow_config` read the files.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["applies", "committees", "effective_config", "load_yaml", "merge", "resolve_files", "variant_fits",
           "workflow_config"]

#: ``include_demo`` values: ``auto`` = the base's datasets only when no overlay declares its own.
INCLUDE_DEMO_VALUES = ("auto", True)
LARGE_REF_PREFIX = "large_ref_"


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a deep copy of ``base`` the way Snakemake merges config files
    (``snakemake.utils.update_config``): mappings recursively, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping):
            sub = out.get(key)
            out[key] = merge(sub if isinstance(sub, Mapping) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's own content (``{}`` for an empty file); not a mapping: ``ValueError``."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: must hold a mapping of keys at the top level")
    return data


def _include_demo(base: Mapping[str, Any], overlays: Sequence[Mapping[str, Any]]) -> Any:
    value = base.get("include_demo", "auto")
    for over in overlays:
        value = over.get("include_demo", value)
    return value


def _own_datasets(overlays: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dataset names the overlays declare, in order."""
    names: list[str] = []
    for over in overlays:
        if isinstance(over.get("datasets"), Mapping):
            names += [n for n in over["datasets"] if n not in names]
    return names


def applies(base: Mapping[str, Any], overlays: Sequence[Mapping[str, Any]]) -> bool:
    """True when the overlays replace the base's datasets: ``include_demo: auto`` and an overlay
    declares a dataset the base does not have (an overlay that only adjusts the base's datasets
    merges as usual); otherwise the effective config is Snakemake's plain merge."""
    base_datasets = base.get("datasets") if isinstance(base.get("datasets"), Mapping) else {}
    new = [n for n in _own_datasets(overlays) if n not in base_datasets]
    return bool(new) and _include_demo(base, overlays) == "auto"


def _declared(overlays: Sequence[Mapping[str, Any]], *path: str) -> bool:
    """Whether some overlay sets the key at ``path`` (e.g. ``("sweep", "methods")``)."""
    for over in overlays:
        node: Any = over
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
        else:
            return True
    return False


def committees(cfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, tuple[list[tuple[str, str]], Any]]:
    """Modality -> (committee as (name, role) pairs, teacher) from the dataset's overrides, else the
    active profile (as :func:`medmix.plan.config.committee` resolves them; a kind without a committee
    gives an empty one, which the config check reports)."""
    experts = cfg.get("experts") or {}
    profile = (experts.get("profiles") or {}).get(experts.get("profile")) or {}
    out = {}
    for mod, spec in (dataset.get("modalities") or {}).items():
        prof = profile.get(spec.get("kind")) or {}
        members = spec["committee"] if "committee" in spec else prof.get("committee") or []
        teacher = spec.get("teacher", prof.get("teacher"))
        out[mod] = ([(m.get("name"), m.get("role")) for m in members], teacher)
    return out


def variant_fits(variant: Mapping[str, Any], teams: Mapping[str, Any]) -> bool:
    """A variant keeps at least one committee expert of the dataset (:func:`medmix.plan.runs.select_committee`)."""
    mods, roles = variant.get("modalities"), variant.get("roles")
    return any(
        (mods is None or mod in mods) and any(roles is None or role in roles for _, role in members)
        for mod, (members, _) in teams.items()
    )


def _runnable(run: str, cfg: Mapping[str, Any], dropped_variants: set[str],
              teams: Mapping[str, Mapping[str, Any]]) -> bool:
    if run in dropped_variants:
        return False
    if run.startswith(LARGE_REF_PREFIX) and run not in (cfg.get("variants") or {}):
        modality = run[len(LARGE_REF_PREFIX):]
        return any(modality in t and t[modality][1] for t in teams.values())
    return True


def effective_config(base: Mapping[str, Any], overlays: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The configuration of ``base`` (``config.yaml``'s content) with ``overlays`` (the
    ``--configfile`` files' own content, then ``--config`` values, in order) applied: Snakemake's
    merge, or with its own ``datasets`` declared the rule of the module docstring."""
    merged: dict[str, Any] = dict(base)
    for over in overlays:
        merged = merge(merged, over)
    if not applies(base, overlays):
        return merged if overlays else copy.deepcopy(dict(base))

    # The datasets are the overlays' own (one the base has too: the base's entry with the overlays'
    # merged over it); demo cohorts only those a dataset reads or an overlay declares.
    cfg = merged
    own = _own_datasets(overlays)
    cfg["datasets"] = {n: d for n, d in (cfg.get("datasets") or {}).items() if n in own}
    cohorts = (cfg.get("demo") or {}).get("cohorts") or {}
    kept = {n: c for n, c in cohorts.items() if n in cfg["datasets"] or _declared(overlays, "demo", "cohorts", n)}
    if kept or _declared(overlays, "demo"):
        cfg["demo"] = {**(cfg.get("demo") or {}), "cohorts": kept}
    else:
        cfg.pop("demo", None)

    datasets = cfg["datasets"]
    development = [n for n, d in datasets.items() if (d or {}).get("role", "development") != "external"]
    modalities = {m for d in datasets.values() for m in ((d or {}).get("modalities") or {})}
    teams = {n: committees(cfg, datasets[n]) for n in development}

    # Variants that leave a development dataset without an expert (unless an overlay's runs name them).
    named: set[str] = set()
    for path in (("methods",), ("sweep", "methods"), ("missing_grid", "methods")):
        if _declared(overlays, *path):
            node: Any = cfg
            for key in path:
                node = node.get(key) or {}
            named |= set(node or [])
    dropped: set[str] = set()
    variants = cfg.get("variants") or {}
    for name in list(variants):
        if _declared(overlays, "variants", name) or name in named:
            continue
        if not all(variant_fits(variants[name], teams[d]) for d in development):
            dropped.add(name)
            del variants[name]

    # Inherited run lists: only runs that can run on these datasets.
    if not _declared(overlays, "methods") and isinstance(cfg.get("methods"), list):
        cfg["methods"] = [r for r in cfg["methods"] if _runnable(r, cfg, dropped, teams)]

    sweep = cfg.get("sweep")
    if isinstance(sweep, dict):
        if not _declared(overlays, "sweep", "methods") and isinstance(sweep.get("methods"), list):
            sweep["methods"] = [r for r in sweep["methods"] if _runnable(r, cfg, dropped, teams)]
        if isinstance(sweep.get("datasets"), list) and not _declared(overlays, "sweep", "datasets"):
            swept = [d for d in sweep["datasets"] if d in development]
            if swept:
                sweep["datasets"] = swept
            else:
                del sweep["datasets"]
                if not _declared(overlays, "sweep", "methods"):
                    sweep["methods"] = []  # the base's sweep named only datasets that are not here: off
        if isinstance(sweep.get("subsets"), list) and not _declared(overlays, "sweep", "subsets"):
            sweep["subsets"] = [s for s in sweep["subsets"] if set(s) <= modalities] or "all"

    # Protocols of the base that name a modality no dataset has.
    for stage in ("train", "test"):
        section = (cfg.get("protocols") or {}).get(stage)
        if not isinstance(section, dict):
            continue
        for name in list(section):
            spec = section[name] or {}
            named_mods = [spec["modality"]] if "modality" in spec else list(spec.get("modalities") or [])
            if not _declared(overlays, "protocols", stage, name) and not set(named_mods) <= modalities:
                del section[name]

    # The missing grid runs on datasets with modality roles: off when none declares them.
    grid = cfg.get("missing_grid")
    has_roles = any((datasets[d] or {}).get("modality_roles") for d in development)
    if isinstance(grid, dict) and not has_roles and not _declared(overlays, "missing_grid", "methods"):
        grid["methods"] = []
    return cfg


def resolve_files(base_path: str | Path | None, overlay_paths: Sequence[str | Path],
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`effective_config` of files: ``base_path`` (``None`` or a file that does not exist:
    no base) and the overlays in order, then ``extra`` (e.g. Snakemake's ``--config`` values).
    An overlay that is the base file itself is applied as an overlay only."""
    base_file = Path(base_path) if base_path is not None and Path(base_path).is_file() else None
    overlays = [Path(p) for p in overlay_paths]
    if base_file is not None and any(p.resolve() == base_file.resolve() for p in overlays):
        base_file = None
    base = load_yaml(base_file) if base_file is not None else {}
    contents = [load_yaml(p) for p in overlays] + ([dict(extra)] if extra else [])
    return effective_config(base, contents)


def workflow_config(base_paths: Sequence[str | Path], overlay_paths: Sequence[str | Path],
                    cli_config: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """For the Snakefile: the effective config when the overlays replace the base's datasets
    (:func:`applies`), else ``None`` (Snakemake's merge stands). ``base_paths``: the
    files the Snakefile's ``configfile:`` loaded; ``overlay_paths``: ``--configfile`` files;
    ``cli_config``: ``--config`` values."""
    overlays = [Path(p).resolve() for p in overlay_paths]
    base: dict[str, Any] = {}
    for path in base_paths:
        if Path(path).is_file() and Path(path).resolve() not in overlays:
            base = merge(base, load_yaml(path))
    contents = [load_yaml(p) for p in overlays] + ([_plain(cli_config)] if cli_config else [])
    if not applies(base, contents):
        return None
    return effective_config(base, contents)


def _plain(value: Any) -> Any:
    """Mappings of any type (Snakemake keeps ``--config`` in an immutable map) as dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
