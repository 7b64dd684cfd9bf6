"""Job bodies of the ``fit`` and ``evaluate`` rules.

``fit`` trains one method under one train-time protocol for every seed and saves the trained
method (:meth:`~medmix.methods.base.FusionMethod.save`) with the feature scaling fit on the
training split. ``evaluate`` loads them and writes predictions for each cohort: the development
cohort's validation split (clean, for threshold tuning) and test split under every test-time
protocol, or every row of an external cohort. Adding a test protocol or an external cohort
therefore never retrains.

The workflow runs one ``evaluate`` job per development dataset (:func:`evaluate_dataset_job`)
over every fitted run of it: evaluating a run takes well under a second, while a job process
takes ~2.5 s to start (Python, torch, pandas), so one job per run and cohort spent most of its
time starting. The same job measures the deployment cost of the table runs (Table E6,
:func:`~medmix.pipeline.efficiency.fit_cost`): the CPU memory tracker is a torch dispatch mode,
whose first use imports ``torch._dynamo`` (1.3 s), so it is paid once per dataset, not per fit.

Predictions are long-form, one row per (seed, eval_set, test_protocol, sample), with the
columns ``dataset``, ``method``, ``train_protocol``, ``cohort``, ``eval_set``,
``test_protocol``, ``seed``, ``sample_id``, ``prob:<label>``, ``label:<label>``,
``present:<modality>`` (after the protocol) and, where the method reports them, per-sample
router (``router:<modality>:<expert>``) and fusion (``fusion:<modality>``) weights. Thresholds are
not chosen here: the tables step tunes them on the ``val`` rows only. Prediction files carry a
checksum (:func:`medmix.store.write_predictions`); readers use :func:`medmix.store.read_predictions`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmix.cohort import read_cohort
from medmix.data import Standardizer, TensorData, from_bundle
from medmix.features import assemble
from medmix.methods import create_method, load_method
from medmix.methods.base import chosen_values
from medmix.pipeline.efficiency import fit_cost
from medmix.protocols import Protocol, parse_protocols, prefit_view
from medmix.store import write_predictions
from medmix.store.atomic import atomic_path, write_text_atomic

log = logging.getLogger("medmix.fit")
#: Test-time protocols draw their masks from this seed offset (+ :meth:`Protocol.seed`: the
#: protocol's name, kind and parameters, never its position in config).
TEST_PROTOCOL_SEED = 10_000
SCALER_FILE = "standardizer.safetensors"


def load_dataset(cohort_path: str, committee: dict[str, Any], features: dict[str, str],
                 identities: dict[str, dict[str, Any]]) -> TensorData:
    """Cohort + cached features of its committee (and teachers) as in-memory tensors.

    ``committee`` maps modality -> ``{"committee": [[name, role], ...], "teacher": name | None}``;
    ``features`` maps ``"<modality>/<expert>"`` to the feature file the rule passed in.
    """
    cohort = read_cohort(cohort_path)

    def path(mod: str, name: str) -> str:
        key = f"{mod}/{name}"
        if key not in features:
            raise KeyError(f"dataset {cohort.name!r}: no feature file was passed for {key}")
        return features[key]

    def expected(mod: str, name: str) -> dict[str, Any] | None:
        """Per feature key where the width follows the dataset (config.with_expected_dims), else per expert."""
        return identities.get(f"{mod}/{name}", identities.get(name))

    members = {
        mod: [{"path": path(mod, name), "role": role, "expected": expected(mod, name)}
              for name, role in spec["committee"]]
        for mod, spec in committee.items()
    }
    teachers = {
        mod: {"path": path(mod, spec["teacher"]), "expected": expected(mod, spec["teacher"])}
        for mod, spec in committee.items()
        if spec.get("teacher")
    }
    return from_bundle(cohort, assemble(cohort.sample_ids, members, teachers))


def fit_method(data: TensorData, method: str, params: dict[str, Any], seeds: list[int], train_protocol: Protocol,
               pretrained: dict[str, str] | None = None, *, source: str = "data", run: str | None = None):
    """Standardise ``data`` and fit ``method``: returns ``(model, scaler)``.

    The standardiser is fitted on what ``train_protocol`` leaves of the training split
    (:func:`~medmix.protocols.prefit_view`), so no statistic reads values the protocol removes;
    it is saved with the model and applied to every split. ``source`` names the data in errors.
    """
    scaler = Standardizer.fit(prefit_view(data.split_part("train"), train_protocol))
    data = scaler.apply(data)
    train, val = data.split_part("train"), data.split_part("val")
    for name, part in (("train", train), ("val", val)):
        if part.n == 0:
            raise ValueError(f"{source}: the {name} split is empty")
    log.info("%s (method %s): train %d, val %d samples; modalities %s; seeds %s; train protocol %s", run or method,
             method, train.n, val.n, data.modalities, seeds, train_protocol.name)
    model = create_method(method, params)
    if pretrained:
        if not hasattr(model, "load_stages"):
            raise TypeError(f"{method}: pre-training stage outputs were passed but the method has no stages")
        model.load_stages(pretrained)
    model.fit(train, val, seeds, train_protocol)
    return model, scaler


def fit_job(
    *,
    method: str,
    run: str | None = None,
    cohort_path: str,
    committee: dict[str, Any],
    features: dict[str, str],
    identities: dict[str, dict[str, Any]],
    params: dict[str, Any],
    seeds: list[int],
    train_protocol: Protocol,
    out_model: str,
    out_curves: str,
    out_info: str,
    pretrained: dict[str, str] | None = None,
) -> None:
    """``pretrained``: stage name -> folder of a staged method's pre-training outputs (medmix.pipeline.stage)."""
    t0 = time.perf_counter()
    data = load_dataset(cohort_path, committee, features, identities)
    run = run or method
    model, scaler = fit_method(data, method, params, seeds, train_protocol, pretrained, source=cohort_path, run=run)
    train, val = data.split_part("train"), data.split_part("val")
    t_fit = time.perf_counter() - t0
    files = model.save(out_model)
    files.append(scaler.save(Path(out_model) / SCALER_FILE))
    with atomic_path(out_curves) as tmp:
        model.curves().to_csv(tmp, index=False)
    info = {
        "run": run, "method": method, "seeds": seeds, "train_protocol": train_protocol.name,
        "n": {"train": train.n, "val": val.n}, "params": params, "committee": committee,
        "files": [str(f) for f in files], "selection": model.selection, "seconds_fit": round(t_fit, 2),
        "torch_threads": torch.get_num_threads(),
    }
    write_text_atomic(out_info, json.dumps(info, indent=2, default=str))
    log.info("%s fitted in %.1fs", run, t_fit)


def _frame(data: TensorData, prob: np.ndarray, extras: dict, extra_cols: dict, seeds, keys: dict[str, str],
           chosen: dict[int, dict[str, float]] | None = None) -> pd.DataFrame:
    frames = []
    present = data.modality_mask().numpy()
    for s, seed in enumerate(seeds):
        cols: dict[str, Any] = {**keys, "seed": seed, "sample_id": data.sample_ids}
        # Hyper-parameters this seed's model was chosen with on validation (provenance for the tables).
        cols.update({f"hp:{k}": v for k, v in (chosen or {}).get(seed, {}).items()})
        for c, label in enumerate(data.labels):
            cols[f"prob:{label}"] = prob[s, :, c]
            cols[f"label:{label}"] = data.y[:, c].numpy()
        for j, mod in enumerate(data.modalities):
            cols[f"present:{mod}"] = present[:, j]
        for key, arr in extras.items():
            names = extra_cols.get(key, [str(i) for i in range(arr.shape[-1])])
            for j, name in enumerate(names):
                cols[f"{key}:{name}"] = arr[s, :, j]
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def predict_protocols(method, data: TensorData, protocols: list[Protocol], keys: dict[str, str]) -> list[pd.DataFrame]:
    """Predictions under each protocol; masks drawn from ``protocol.seed(TEST_PROTOCOL_SEED)``."""
    out = []
    for protocol in protocols:
        gen = torch.Generator().manual_seed(protocol.seed(TEST_PROTOCOL_SEED))
        view = data if protocol.is_identity else data.with_mask(protocol.apply(data.mask, gen))
        pred = method.predict(view)
        if not np.isfinite(pred.prob).all():
            raise FloatingPointError(f"{method.name}: non-finite predictions on {keys['eval_set']}/{protocol.name}")
        out.append(_frame(view, pred.prob, pred.extras, pred.extra_columns, method.seeds,
                          {**keys, "test_protocol": protocol.name},
                          {seed: chosen_values(method.selection, seed) for seed in method.seeds}))
    return out


def evaluate_job(
    *,
    dataset: str,
    run: str | None = None,
    cohort: str,
    train_protocol: str,
    model_dir: str,
    cohort_path: str,
    committee: dict[str, Any],
    features: dict[str, str],
    identities: dict[str, dict[str, Any]],
    test_protocols: dict[str, Any],
    out_predictions: str,
    method=None,
    cost: bool = False,
) -> dict[str, Any] | None:
    """Predictions of a fitted method on ``cohort`` (the development dataset itself or an external one).

    ``method``: the method already loaded from ``model_dir`` (default: load it). ``cost``: also return
    the deployment cost record of one seed's model on the validation split (development cohort only).
    """
    t0 = time.perf_counter()
    method = method if method is not None else load_method(model_dir)
    scaler = Standardizer.load(Path(model_dir) / SCALER_FILE)
    data = scaler.apply(load_dataset(cohort_path, committee, features, identities))
    protocols = parse_protocols(test_protocols)
    # The run name (a method or a variant of one) identifies the rows in every table.
    keys = {"dataset": dataset, "method": run or method.name, "train_protocol": train_protocol, "cohort": cohort}
    frames = []
    record = None
    if cohort == dataset:
        val, test = data.split_part("val"), data.split_part("test")
        clean = [p for p in protocols if p.is_identity][:1]
        if not clean:
            raise ValueError("protocols.test needs an identity protocol (kind: none) to tune thresholds on validation")
        frames += predict_protocols(method, val, clean, {**keys, "eval_set": "val"})
        if test.n:
            frames += predict_protocols(method, test, protocols, {**keys, "eval_set": "test"})
        if cost:
            record = fit_cost(method, val)  # Table E6 (medmix.pipeline.efficiency)
    else:
        if cost:
            raise ValueError(f"{keys['method']}: the deployment cost is measured on the development "
                             f"cohort, not {cohort}")
        frames += predict_protocols(method, data, protocols, {**keys, "eval_set": f"external:{cohort}"})
    predictions = pd.concat(frames, ignore_index=True)
    write_predictions(predictions, out_predictions)  # atomic, with a checksum verified on every read
    log.info("%s on %s: %d prediction rows in %.1fs", keys["method"], cohort, len(predictions),
             time.perf_counter() - t0)
    return record


def evaluate_dataset_job(*, dataset: str, runs: list[dict[str, Any]], out_costs: str) -> None:
    """Every fitted run of development dataset ``dataset`` on its cohorts, and the table runs' costs.

    ``runs``: per run ``{"run", "train_protocol", "model_dir", "test_protocols", "cost": bool,
    "cohorts": [{"cohort", "cohort_path", "committee", "features", "identities", "out"}, ...]}``
    (:func:`evaluate_job`'s arguments). ``out_costs``: JSON ``{"dataset", "costs": {run: record}}``
    of the runs with ``cost`` true (Table E6). Each prediction file is written atomically as soon
    as it is done.
    """
    t0 = time.perf_counter()
    costs: dict[str, Any] = {}
    for spec in runs:
        method = load_method(spec["model_dir"])
        for c in spec["cohorts"]:
            record = evaluate_job(
                dataset=dataset, run=spec["run"], cohort=c["cohort"], train_protocol=spec["train_protocol"],
                model_dir=spec["model_dir"], cohort_path=c["cohort_path"], committee=c["committee"],
                features=c["features"], identities=c["identities"], test_protocols=spec["test_protocols"],
                out_predictions=c["out"], method=method, cost=bool(spec.get("cost")) and c["cohort"] == dataset)
            if record is not None:
                costs[spec["run"]] = record
    missing = [s["run"] for s in runs if s.get("cost") and s["run"] not in costs]
    if missing:
        raise ValueError(f"{dataset}: no cost measured for {missing} (their development cohort was not evaluated)")
    write_text_atomic(out_costs, json.dumps({"dataset": dataset, "costs": costs}, indent=2, default=str))
    log.info("%s: %d runs evaluated in %.1fs", dataset, len(runs), time.perf_counter() - t0)
