"""CP-IMoE's missing grid (Table S3 / S2, router figures) on the IU X-ray dev cohort, through the API.

Cohort, stage-1 features and standardisation as ``bench_iu_dev.py`` (three text modalities
``indication``, ``findings``, ``impression``; features cached under ``--cache``). Roles: primary =
``findings``, secondary = ``impression``. For each (method, setting, rate): train under the
protocol ``missing_one`` (the grid's, :mod:`medmix.plan.missing_grid`) and evaluate the test split under
the same protocol (mask seed 10000 + the cell's position), thresholds tuned on the clean validation
split. CP-IMoE's pre-training stages run once and are shared by every cell and by
``cpimoe_router``. Writes ``table_s3.md``, ``per_class_f1.md``, ``table_s2.md``, ``grid_metrics.csv``
and router heatmaps into ``--out``.

Usage::

    python tests/benchmarks/bench_cpimoe_iu.py --cache /tmp/iu_cache --out /tmp/iu_cpimoe_out \\
        [--methods cpimoe cpimoe_router medmix] [--rates 0.2 0.4 0.6 0.8] [--seeds 0 1 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd
import torch
from bench_iu_dev import ROOT, build_iu_cohort, extract, load_config, load_data, method_params, text_committee

ROLES = {"primary": "findings", "secondary": "impression"}


def main(argv: list[str] | None = None) -> None:
    from medmix.evaluation.cpimoe_tables import (
        cell_metrics,
        gate_heatmap,
        per_class_markdown,
        table_s2_markdown,
        table_s3_markdown,
    )
    from medmix.methods import create_method
    from medmix.metrics.classification import tune_thresholds
    from medmix.models.cpimoe import training_step_cost
    from medmix.plan.missing_grid import protocol_name
    from medmix.protocols import Protocol
    from medmix.training.cpimoe_stages import run_all_stages

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "iu_xray_dev")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--methods", nargs="+", default=["cpimoe", "cpimoe_router", "medmix"])
    parser.add_argument("--settings", nargs="+", default=["primary", "secondary", "random"])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    config = load_config(args.config)
    committee, teacher = text_committee(config)
    cohort = build_iu_cohort(args.data)
    files = extract(cohort, args.cache, [e["name"] for e in committee] + ([teacher] if teacher else []),
                    (config.get("experts") or {}).get("settings") or {})
    data = load_data(cohort, files, committee, teacher)
    train, val, test = (data.split_part(s) for s in ("train", "val", "test"))
    print(f"cohort train/val/test {train.n}/{val.n}/{test.n}; features {time.perf_counter() - t0:.1f}s", flush=True)
    base = method_params(config, "cpimoe", {}, args.threads)
    t = time.perf_counter()
    stages = run_all_stages(train, val, args.seeds, base)
    print(f"cpimoe stages ({', '.join(stages)}) in {time.perf_counter() - t:.1f}s", flush=True)
    rows, gates, models = [], [], {}
    cells = [(s, r) for s in args.settings for r in args.rates]
    for position, (setting, rate) in enumerate(cells):
        mods = [ROLES["primary"], ROLES["secondary"]] if setting == "random" else [ROLES[setting]]
        protocol = Protocol(protocol_name(setting, rate), "missing_one", {"modalities": mods, "p": rate})
        view = test.with_mask(protocol.apply(test.mask, torch.Generator().manual_seed(10_000 + position)))
        for name in args.methods:
            t = time.perf_counter()
            method = create_method(name, method_params(config, name, {}, args.threads))
            if hasattr(method, "load_stages"):
                method.pretrained = stages
            method.fit(train, val, args.seeds, protocol)
            models[name] = method
            pv, pred = method.predict(val), method.predict(view)
            for s, seed in enumerate(method.seeds):
                thr = tune_thresholds(pv.prob[s], val.y.numpy())
                m = cell_metrics(pred.prob[s], view.y.numpy(), view.task, view.labels, thr)
                rows.append({"dataset": "iu_xray_dev", "method": name, "setting": setting, "rate": rate,
                             "seed": seed, "n": view.n, **m})
            if "gate" in pred.extras:
                for j, expert in enumerate(pred.extra_columns["gate"]):
                    gates.append({"dataset": "iu_xray_dev", "method": name, "setting": setting, "rate": rate,
                                  "expert": expert, "weight": float(pred.extras["gate"][:, :, j].mean())})
            last = pd.DataFrame(rows[-len(method.seeds):])
            print(f"{name} {protocol.name}: F1 {last.f1.mean():.4f} kappa {last.kappa.mean():.4f} acc "
                  f"{last.acc.mean():.4f} ({time.perf_counter() - t:.1f}s)", flush=True)
    metrics = pd.DataFrame(rows)
    metrics.to_csv(args.out / "grid_metrics.csv", index=False)
    (args.out / "table_s3.md").write_text(table_s3_markdown(metrics, args.seeds, "train_and_test") + "\n")
    (args.out / "per_class_f1.md").write_text(per_class_markdown(metrics) + "\n")
    gates_frame = pd.DataFrame(gates)
    gates_frame.to_csv(args.out / "router_weights.csv", index=False)
    for name in gates_frame.method.unique() if not gates_frame.empty else []:
        gate_heatmap(gates_frame, "iu_xray_dev", name, args.out / f"router_iu_xray_dev_{name}.png")
    if "cpimoe" in models:
        n = min(256, train.n)
        x = {m: [t[:n] for t in xs] for m, xs in train.x.items()}
        mask = {m: t[:n] for m, t in train.mask.items()}
        y = torch.nan_to_num(train.y[:n])
        cost = []
        for label, full in (("Full model training", True), ("cpimoe (last stage)", False)):
            c = training_step_cost(models["cpimoe"].models[0], x, mask, y, train.task, full=full)
            cost.append({"method": label, "trainable_params": int(c["trainable_params"]),
                         "flops_per_sample": c["flops_per_step"] / n,
                         "flops_per_epoch": c["flops_per_step"] / n * train.n})
        (args.out / "table_s2.md").write_text(table_s2_markdown({"iu_xray_dev": cost}) + "\n")
    print((args.out / "table_s3.md").read_text())
    print(f"wall {time.perf_counter() - t0:.1f}s; mean test F1 per method: "
          f"{metrics.groupby('method').f1.mean().round(4).to_dict()}; seeds {args.seeds}", flush=True)


if __name__ == "__main__":
    main()
