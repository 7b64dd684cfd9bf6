"""The CP-IMoE supplementary's missing-modality grid (Table S3), declared in config.

``datasets.<name>.modality_roles: {primary: <modality>, secondary: <modality>}`` declares the
pair; the ``missing_grid`` section the grid::

    missing_grid:
      methods: [cpimoe, medmix]        # compared side by side (registered methods only)
      settings: [primary, secondary, random]
      rates: [0.2, 0.4, 0.6, 0.8]
      mode: train_and_test             # or test_only
      n_seeds: 1                       # the grid's own runs train the first n of `seeds` (default: all)

Each (setting, rate) is a protocol ``miss_<setting>_<percent>`` of kind ``missing_one``
(:mod:`medmix.protocols`): the primary or the secondary modality, or one of the two at random, is
removed from exactly ``rate`` of the samples. ``train_and_test`` (the reference code's setting):
one run per (dataset, method, protocol) trained under the protocol and evaluated under the same
protocol (its *matching* test protocol, added to the run's test protocols). ``test_only``: the
clean run (train protocol ``none``) is evaluated under every grid protocol.

``n_seeds`` (``train_and_test`` only; default: all): the grid's own runs train the first
``n_seeds`` of the top-level ``seeds``. The pre-training stages they share with the clean runs are
trained for every seed, so a grid run reads the stages of its seeds.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("medmix.plan.missing_grid")
SETTINGS = ("primary", "secondary", "random")
MODES = ("train_and_test", "test_only")


class GridError(ValueError):
    """The missing grid or a dataset's modality roles are invalid (the config check turns it into a
    ``ConfigError``)."""


def grid(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``missing_grid`` section, or ``{}`` when it is off (absent, or no methods listed)."""
    g = cfg.get("missing_grid") or {}
    return g if g.get("methods") else {}


def grid_methods(cfg: dict[str, Any]) -> list[str]:
    """``missing_grid.methods`` (each must be a registered method)."""
    from medmix.methods import is_known_method

    methods = list(grid(cfg).get("methods", []))
    for m in methods:
        if not is_known_method(m):
            raise GridError(f"config key `missing_grid.methods`: unknown method {m!r}")
    return methods


def protocol_name(setting: str, rate: float) -> str:
    return f"miss_{setting}_{int(round(float(rate) * 100))}"


def grid_datasets(cfg: dict[str, Any]) -> list[str]:
    """Development datasets that declare modality roles (the grid runs on them)."""
    if not grid(cfg):
        return []
    return [n for n, d in cfg["datasets"].items() if d.get("modality_roles") and d.get("role") != "external"]


def dataset_protocols(cfg: dict[str, Any], dataset: str) -> dict[str, dict[str, Any]]:
    """Protocol name -> spec of the grid on ``dataset`` (empty if it declares no roles)."""
    g, roles = grid(cfg), cfg["datasets"][dataset].get("modality_roles")
    if not g or not roles:
        return {}
    out = {}
    for setting in g.get("settings", SETTINGS):
        mods = [roles["primary"], roles["secondary"]] if setting == "random" else [roles[setting]]
        for rate in g.get("rates", []):
            out[protocol_name(setting, rate)] = {"kind": "missing_one", "modalities": mods, "p": float(rate)}
    return out


def grid_cells(cfg: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(setting, rate, protocol name) in table order."""
    g = grid(cfg)
    return [(s, float(r), protocol_name(s, r)) for s in g.get("settings", SETTINGS) for r in g.get("rates", [])]


def grid_runs(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dataset, method, train protocol) of every run the grid needs."""
    g = grid(cfg)
    runs = []
    for d in grid_datasets(cfg):
        for m in grid_methods(cfg):
            if g.get("mode", "train_and_test") == "test_only":
                runs.append((d, m, "none"))
            else:
                runs += [(d, m, p) for p in dataset_protocols(cfg, d)]
    return list(dict.fromkeys(runs))


def applies(spec: dict[str, Any], modalities: list[str]) -> bool:
    """Whether a configured protocol runs on a dataset with ``modalities``: a ``drop_one`` protocol only
    where its modality exists (the paper's per-modality rows differ by dataset); every other kind always."""
    return spec.get("kind") != "drop_one" or spec.get("modality") in modalities


def own_protocols(cfg: dict[str, Any], dataset: str, side: str) -> dict[str, dict[str, Any]]:
    """``protocols.<side>`` (train / test) restricted to the protocols that apply to ``dataset``."""
    default = {"none": {"kind": "none"}} if side == "test" else {}
    section = cfg.get("protocols", {}).get(side, default)
    mods = list(cfg["datasets"][dataset].get("modalities", {}))
    return {name: spec for name, spec in section.items() if applies(spec, mods)}


def train_protocol_spec(cfg: dict[str, Any], dataset: str, protocol: str) -> dict[str, Any]:
    """A train protocol: ``protocols.train`` first, then the dataset's grid protocols."""
    own = own_protocols(cfg, dataset, "train")
    if protocol in own:
        return own[protocol]
    if grid(cfg).get("mode", "train_and_test") == "train_and_test" and protocol in dataset_protocols(cfg, dataset):
        return dataset_protocols(cfg, dataset)[protocol]
    if protocol == "none":
        return {"kind": "none"}
    raise GridError(f"train protocol {protocol!r} is neither in `protocols.train` nor in the missing grid of {dataset}")


def test_protocol_specs(cfg: dict[str, Any], dataset: str, method: str, protocol: str) -> dict[str, Any]:
    """``protocols.test`` plus, for a grid run, its matching test protocol(s) (appended, in order)."""
    out = own_protocols(cfg, dataset, "test")
    g = grid(cfg)
    if not g or dataset not in grid_datasets(cfg) or method not in grid_methods(cfg):
        return out
    extra = dataset_protocols(cfg, dataset)
    if g.get("mode", "train_and_test") == "train_and_test":
        extra = {protocol: extra[protocol]} if protocol in extra else {}
    elif protocol != "none":
        extra = {}
    for name, spec in extra.items():
        out.setdefault(name, spec)
    return out


def grid_seeds(cfg: dict[str, Any]) -> list[int]:
    """Seeds of the grid's runs: the first ``missing_grid.n_seeds`` of ``seeds`` under ``train_and_test``
    (default: all); under ``test_only`` the grid reads the clean runs, which train every seed."""
    g = grid(cfg)
    if g.get("mode", "train_and_test") == "test_only" or g.get("n_seeds") is None:
        return list(cfg["seeds"])
    return list(cfg["seeds"])[: int(g["n_seeds"])]


def is_grid_run(cfg: dict[str, Any], dataset: str, protocol: str) -> bool:
    """Whether ``protocol`` on ``dataset`` is one of the grid's own train protocols (not in ``protocols``)."""
    return (grid(cfg).get("mode", "train_and_test") == "train_and_test"
            and protocol not in own_protocols(cfg, dataset, "train") and protocol in dataset_protocols(cfg, dataset))


def check(cfg: dict[str, Any]) -> None:
    """Semantic checks of ``missing_grid`` and ``modality_roles`` (names the offending key)."""
    for name, ds in cfg["datasets"].items():
        roles = ds.get("modality_roles")
        if not roles:
            continue
        mods = list(ds.get("modalities", {}))
        for role in ("primary", "secondary"):
            if roles.get(role) not in mods:
                raise GridError(f"config key `datasets.{name}.modality_roles.{role}`: {roles.get(role)!r} is not a "
                                f"modality of {name} ({mods})")
        if roles["primary"] == roles["secondary"]:
            raise GridError(f"config key `datasets.{name}.modality_roles`: primary and secondary must differ")
    g = grid(cfg)
    if not g:
        return
    grid_methods(cfg)  # unknown methods are errors
    if g.get("n_seeds") is not None and g.get("mode", "train_and_test") == "test_only":
        raise GridError("config key `missing_grid.n_seeds`: a test_only grid evaluates the clean runs, which train "
                        "every seed in `seeds`; drop `missing_grid.n_seeds` or use mode train_and_test")
    own = set(cfg.get("protocols", {}).get("train", {})) | set(cfg.get("protocols", {}).get("test", {}))
    for _setting, _rate, pname in grid_cells(cfg):
        if pname in own:
            raise GridError(f"config key `missing_grid`: protocol name {pname!r} is also declared in `protocols`")
    if not grid_datasets(cfg):
        log.warning("missing_grid: no development dataset declares `modality_roles`; the grid has nothing to run")
