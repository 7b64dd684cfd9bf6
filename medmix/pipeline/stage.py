"""Job body of the ``stages`` rule: the pre-training stages of a staged method (e.g. CP-IMoE).

A method with pre-training stages names a *stage module* (``stage_module`` class attribute) that
provides ``stage_plan(modalities) -> {stage: [stages it reads]}`` (in the order they must run),
``stage_params(params)`` (the params that change a stage's output) and
``run_stage(stage, train, val, seeds, params, needs)``, plus ``save_stage`` / ``load_stage``.
One job per train-time protocol runs every stage of the plan (each sees what the protocol leaves
of the training split, :func:`~medmix.protocols.prefit_view`) into its own subfolder of the
job's folder, shared by every method with the same ``stage_owner``; the ``fit`` job hands the
subfolders to the method (``load_stages``), so a change to the last stage never retrains a
frozen one. (One job per stage cost a process start each, ~2.5 s of CPU, against stages that
train in 0.3-10 s on the demo; every stage reads all of the dataset's features, so a job per
stage never spared a rerun.)
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


def stage_folders(folders: list[str]) -> dict[str, str]:
    """``{stage: folder}`` of ``stages`` jobs' outputs (one folder per job, a subfolder per stage)."""
    return {sub.name: str(sub) for folder in folders for sub in sorted(Path(folder).iterdir()) if sub.is_dir()}


def stages_job(
    *,
    method: str,
    cohort_path: str,
    committee: dict[str, Any],
    features: dict[str, str],
    identities: dict[str, dict[str, Any]],
    params: dict[str, Any],
    seeds: list[int],
    train_protocol: Protocol,
    out_dir: str,
) -> None:
    """Every pre-training stage of ``method`` under ``train_protocol``, in plan order, each into
    ``out_dir/<stage>`` (the stages it reads are loaded from there)."""
    module = stage_module(method)
    if module is None:
        raise ValueError(f"method {method!r} has no pre-training stages")
    data = load_dataset(cohort_path, committee, features, identities)
    data = Standardizer.fit(prefit_view(data.split_part("train"), train_protocol)).apply(data)  # as fit_method does
    train, val = prefit_view(data.split_part("train"), train_protocol), data.split_part("val")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stage, needs in module.stage_plan(train.modalities).items():
        t0 = time.perf_counter()
        loaded = {name: module.load_stage(out / name) for name in needs}
        settings, states, curves = module.run_stage(stage, train, val, seeds, params, loaded)
        settings["seconds"] = round(time.perf_counter() - t0, 2)
        module.save_stage(out / stage, settings, seeds, states)
        with atomic_path(out / stage / "curves.csv") as tmp:
            curves.to_csv(tmp, index=False)
        log.info("%s stage %s: %s samples, seeds %s, %.1fs", method, stage, settings.get("n"), seeds,
                 settings["seconds"])
