"""Job body of the ``fit`` rule: train once per seed, evaluate every test protocol.

Predictions are written in long form, one row per (seed, eval_set, test_protocol, sample):
``prob:<label>``, ``label:<label>``, ``present:<modality>`` (after the protocol), and
per-sample router (``router:<modality>:<expert>``) and fusion (``fusion:<modality>``) weights
where the method reports them. Thresholds are not chosen here: the tables step tunes them on
the ``val`` rows only.
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

from medmix.atomic import atomic_path, write_text_atomic
from medmix.cohort import read_cohort
from medmix.config import feature_path
from medmix.data import Standardizer, TensorData, from_bundle
from medmix.features import assemble
from medmix.methods import create_method
from medmix.protocols import Protocol, parse_protocols

log = logging.getLogger("medmix.fit")
#: Test-time protocols draw their masks from this seed offset, fixed and reported.
TEST_PROTOCOL_SEED = 10_000


def load_dataset(cohort_path: str, committee: dict[str, Any], identities: dict[str, dict[str, Any]]) -> TensorData:
    """Cohort + cached features of its committee (and teachers) as in-memory tensors."""
    cohort = read_cohort(cohort_path)
    members = {
        mod: [
            {"path": feature_path(cohort.name, mod, name), "role": role, "expected": identities.get(name)}
            for name, role in spec["committee"]
        ]
        for mod, spec in committee.items()
    }
    teachers = {
        mod: {"path": feature_path(cohort.name, mod, spec["teacher"]), "expected": identities.get(spec["teacher"])}
        for mod, spec in committee.items()
        if spec.get("teacher")
    }
    return from_bundle(cohort, assemble(cohort.sample_ids, members, teachers))


def _frame(data: TensorData, prob: np.ndarray, extras: dict, extra_cols: dict, seeds, eval_set: str, protocol: str) -> pd.DataFrame:
    frames = []
    present = data.modality_mask().numpy()
    for s, seed in enumerate(seeds):
        cols: dict[str, Any] = {"seed": seed, "eval_set": eval_set, "test_protocol": protocol, "sample_id": data.sample_ids}
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


def evaluate(method, data: TensorData, seeds, eval_set: str, protocols: list[Protocol]) -> list[pd.DataFrame]:
    out = []
    for i, protocol in enumerate(protocols):
        gen = torch.Generator().manual_seed(TEST_PROTOCOL_SEED + i)
        view = data if protocol.is_identity else data.with_mask(protocol.apply(data.mask, gen))
        pred = method.predict(view)
        if not np.isfinite(pred.prob).all():
            raise FloatingPointError(f"{method.name}: non-finite predictions on {eval_set}/{protocol.name}")
        out.append(_frame(view, pred.prob, pred.extras, pred.extra_columns, seeds, eval_set, protocol.name))
    return out


def fit_job(
    *,
    method: str,
    cohort_path: str,
    committee: dict[str, Any],
    identities: dict[str, dict[str, Any]],
    params: dict[str, Any],
    seeds: list[int],
    train_protocol: Protocol,
    test_protocols: dict[str, Any],
    externals: dict[str, str],
    out_predictions: str,
    out_curves: str,
    out_checkpoints: str,
    out_info: str,
) -> None:
    t0 = time.perf_counter()
    data = load_dataset(cohort_path, committee, identities)
    # Feature scaling is fit on the training split only and shipped with the checkpoints.
    scaler = Standardizer.fit(data.split_part("train"))
    data = scaler.apply(data)
    train, val, test = (data.split_part(s) for s in ("train", "val", "test"))
    for name, part in (("train", train), ("val", val)):
        if part.n == 0:
            raise ValueError(f"{cohort_path}: the {name} split is empty")
    log.info("%s: train %d, val %d, test %d samples; seeds %s; train protocol %s",
             method, train.n, val.n, test.n, seeds, train_protocol.name)
    model = create_method(method, params)
    model.fit(train, val, seeds, train_protocol)
    t_fit = time.perf_counter()
    protocols = parse_protocols(test_protocols)
    frames = evaluate(model, val, seeds, "val", protocols[:1])
    if test.n:
        frames += evaluate(model, test, seeds, "test", protocols)
    for ext_name, ext_cohort in externals.items():
        ext = scaler.apply(load_dataset(ext_cohort, committee, identities))
        frames += evaluate(model, ext, seeds, f"external:{ext_name}", protocols)
    predictions = pd.concat(frames, ignore_index=True)
    with atomic_path(out_predictions) as tmp:
        predictions.to_parquet(tmp, index=False)
    with atomic_path(out_curves) as tmp:
        model.curves().to_csv(tmp, index=False)
    Path(out_checkpoints).mkdir(parents=True, exist_ok=True)
    files = model.save(Path(out_checkpoints))
    from safetensors.torch import save_file

    scaler_file = Path(out_checkpoints) / "standardizer.safetensors"
    save_file(scaler.tensors(), str(scaler_file))
    files.append(scaler_file)
    info = {
        "method": method, "seeds": seeds, "train_protocol": train_protocol.name,
        "test_protocols": [p.name for p in protocols], "test_protocol_seed": TEST_PROTOCOL_SEED,
        "n": {"train": train.n, "val": val.n, "test": test.n}, "params": params, "committee": committee,
        "checkpoints": [str(f) for f in files], "seconds_fit": round(t_fit - t0, 2),
        "seconds_total": round(time.perf_counter() - t0, 2), "torch_threads": torch.get_num_threads(),
    }
    write_text_atomic(out_info, json.dumps(info, indent=2, default=str))
    log.info("%s done in %.1fs (fit %.1fs)", method, info["seconds_total"], info["seconds_fit"])
