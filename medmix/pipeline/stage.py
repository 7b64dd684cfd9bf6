"""Job body of the ``stage`` rule: one pre-training stage of a staged method (e.g. CP-IMoE).

A method with pre-training stages names a *stage module* (``stage_module`` class attribute) that
provides ``stage_plan(modalities) -> {stage: [stages it reads]}``, ``stage_params(params)`` (the
params that change a stage's output) and ``run_stage(stage, train, val, seeds, params, needs)``,
plus ``save_stage`` / ``load_stage``. Each stage is its own cached output per train-time protocol
(it sees what the protocol leaves of the training split, :func:`~medmix.protocols.prefit_view`),
shared by every method with the same ``stage_owner``; the ``fit`` job hands the folders to
the method (``load_stages``), so a change to the last stage never retrains a frozen one.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from medmix.data import Standardizer
from medmix.pipeline.fit import load_dataset
from medmix.protocols import Protocol, prefit_view
from medmix.store.atomic import atomic_path

log = logging.getLogger("medmix.stage")


def stage_module(method: str) -> ModuleType | None:
    """The method's stage module, or None for a method trained in one stage."""
    from medmix.methods import get_method_class

    name = getattr(get_method_class(method), "stage_module", None)
    return importlib.import_module(name) if name else None


def stage_owner(method: str) -> str:
    from medmix.methods import get_method_class

    return getattr(get_method_class(method), "stage_owner", method)


def stage_job(
    *,
    method: str,
    stage: str,
    cohort_path: str,
    committee: dict[str, Any],
    features: dict[str, str],
    identities: dict[str, dict[str, Any]],
    params: dict[str, Any],
    seeds: list[int],
    train_protocol: Protocol,
    needs: dict[str, str],
    out_dir: str,
) -> None:
    t0 = time.perf_counter()
    module = stage_module(method)
    if module is None:
        raise ValueError(f"method {method!r} has no pre-training stages")
    data = load_dataset(cohort_path, committee, features, identities)
    data = Standardizer.fit(prefit_view(data.split_part("train"), train_protocol)).apply(data)  # as fit_method does
    train, val = prefit_view(data.split_part("train"), train_protocol), data.split_part("val")
    loaded = {name: module.load_stage(path) for name, path in needs.items()}
    settings, states, curves = module.run_stage(stage, train, val, seeds, params, loaded)
    settings["seconds"] = round(time.perf_counter() - t0, 2)
    module.save_stage(out_dir, settings, seeds, states)
    with atomic_path(Path(out_dir) / "curves.csv") as tmp:
        curves.to_csv(tmp, index=False)
    log.info("%s stage %s: %s samples, seeds %s, %.1fs", method, stage, settings.get("n"), seeds, settings["seconds"])
