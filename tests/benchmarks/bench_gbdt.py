"""Benchmark ``gbdt`` fitting: the previous per-label binning against the binned-once fit, one run.

One synthetic wide matrix (``--n`` samples, ``--width`` features over 3 modalities × 2 experts, as
the cached text committee is wide: 16,128 features on IU X-ray), ``--labels`` labels, the method's
2 × 2 grid, ``--rounds`` boosting rounds at most. Variants, each timed on the same data and seeds:

- ``old``: the previous fit: per (seed, label) a fresh ``lgb.Dataset`` of that label's rows (the
  wide matrix re-binned per label), ``force_row_wise``;
- ``new-rowwise``: :class:`medmix.methods.gbdt.GBDT` (binned once per seed, label subsets of the
  binned Dataset) with the layout forced row-wise — the binning reuse alone;
- ``new``: :class:`GBDT` as shipped (column-wise on wide data).

Printed: each variant's fit seconds (wall and this process's CPU, which is robust to other jobs on
a shared machine; LightGBM runs ``--threads`` threads), its speed-up over ``old`` in both (ratios
measured in this run), and
the largest absolute difference of its test probabilities from ``old``'s (0 when the models are
identical). Record the figures in ``tests/benchmarks/results/gbdt_speed.md``.

Usage: ``python tests/benchmarks/bench_gbdt.py [--n 1500] [--width 6000] [--labels 4] [--seeds 0] [--threads 1]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch


def make_data(n: int, width: int, labels: int):
    from medmix.data import Standardizer
    from medmix.training.synthetic import synthetic_data

    d = width // 6
    data = synthetic_data(n=n, dims={m: [d, d] for m in ("indication", "findings", "impression")}, n_labels=labels,
                          missing_modality=0.2, split=(0.65, 0.15), seed=0)
    return Standardizer.fit(data.split_part("train")).apply(data)


def old_fit(method, train, val, seeds: list[int]) -> list[list[str]]:
    """The previous fit loop (binary labels): a fresh Dataset per (seed, label), row-wise, same grid and criterion."""
    import lightgbm as lgb

    from medmix.methods.gbdt import _binary_loss, gbdt_features

    dims = train.dims()
    xt, xv = gbdt_features(train, dims), gbdt_features(val, dims)
    yt_all, yv_all = train.y.numpy().astype(np.float64), val.y.numpy().astype(np.float64)
    out = []
    for seed in seeds:
        models = []
        for j in range(yt_all.shape[1]):
            kt, kv = ~np.isnan(yt_all[:, j]), ~np.isnan(yv_all[:, j])
            dtrain = lgb.Dataset(xt[kt], yt_all[kt, j], free_raw_data=False)
            dval = lgb.Dataset(xv[kv], yv_all[kv, j], reference=dtrain, free_raw_data=False)
            best = None
            for leaves in method.cfg["gbdt_num_leaves"]:
                for lr in method.cfg["gbdt_learning_rate"]:
                    params = method._lgb_params(seed, leaves, lr, "binary", 1, col_wise=False)
                    params.pop("force_col_wise")
                    booster = lgb.train(params, dtrain, num_boost_round=method.cfg["gbdt_max_rounds"],
                                        valid_sets=[dval], valid_names=["val"],
                                        callbacks=[lgb.early_stopping(method.cfg["gbdt_early_stopping"],
                                                                      verbose=False)])
                    text = booster.model_to_string(num_iteration=int(booster.best_iteration)
                                                   or booster.current_iteration())
                    rebuilt = lgb.Booster(model_str=text)
                    _binary_loss(yt_all[kt, j], rebuilt.predict(xt[kt]))
                    vl = _binary_loss(yv_all[kv, j], rebuilt.predict(xv[kv]))
                    if best is None or vl < best[0] - 1e-12:
                        best = (vl, text)
            models.append(best[1])
        out.append(models)
    return out


def predict_models(models: list[list[str]], x: np.ndarray) -> np.ndarray:
    import lightgbm as lgb

    return np.stack([np.stack([lgb.Booster(model_str=m).predict(x) for m in ms], axis=1) for ms in models])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--labels", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from medmix.methods import create_method
    from medmix.methods.gbdt import GBDT, gbdt_features
    from medmix.protocols import Protocol

    torch.set_num_threads(args.threads)
    data = make_data(args.n, args.width, args.labels)
    train, val, test = (data.split_part(s) for s in ("train", "val", "test"))
    xtest = gbdt_features(test, train.dims())
    params = {"gbdt_max_rounds": args.rounds, "gbdt_early_stopping": 30, "threads": args.threads}
    print(f"train {train.n} x {xtest.shape[1]} features, {args.labels} labels, seeds {args.seeds}, "
          f"{args.threads} thread(s)", flush=True)

    t, c = time.perf_counter(), time.process_time()
    ref = predict_models(old_fit(create_method("gbdt", params), train, val, args.seeds), xtest)
    times, cpu = {"old": time.perf_counter() - t}, {"old": time.process_time() - c}
    diffs = {"old": 0.0}
    print(f"old: {times['old']:.1f}s wall, {cpu['old']:.1f}s CPU", flush=True)

    class RowWise(GBDT):
        @staticmethod
        def col_wise(n_rows: int, n_features: int) -> bool:
            return False

    for name, make in (("new-rowwise", lambda: RowWise(params)), ("new", lambda: create_method("gbdt", params))):
        method = make()
        t, c = time.perf_counter(), time.process_time()
        method.fit(train, val, args.seeds, Protocol("none"))
        times[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        diffs[name] = float(np.abs(method.predict(test).prob - ref).max())
        print(f"{name}: {times[name]:.1f}s wall, {cpu[name]:.1f}s CPU", flush=True)

    print("\n| variant | fit wall s | fit CPU s | speed-up vs old (wall) | speed-up vs old (CPU) | "
          "max abs test-prob diff vs old |\n|---|---|---|---|---|---|")
    for name, sec in times.items():
        print(f"| {name} | {sec:.1f} | {cpu[name]:.1f} | {times['old'] / sec:.2f}x | {cpu['old'] / cpu[name]:.2f}x | "
              f"{diffs[name]:.2e} |")
    return {"times": times, "cpu": cpu, "diffs": diffs}


if __name__ == "__main__":
    main()
