"""Modality-subset sweep and Shapley values on the IU X-ray dev cohort (issue 17's evidence), through the Python API.

Cohort, committee, cache and standardisation are :mod:`bench_iu_dev`'s (``--cache`` is shared with
it, so nothing is re-extracted). For each method (default ``gbdt`` and ``medmix``) and every
non-empty subset ``S`` of the three section modalities (7 subsets), the run is **restricted to
S** the way the workflow restricts a sweep run ``<method>@<modality>+...``:
:func:`medmix.plan.runs.select_committee` with ``RunSpec(modalities=S)`` drops the other modalities'
experts and teachers before the features are assembled (same rows, same splits). The method is
fitted on the training split (early stopping / grid on validation), and the test predictions
(protocol ``none``) are written as the evaluate job's prediction frames
(:func:`medmix.pipeline.fit.predict_protocols`) to ``<cache>/sweep/<tag>/*.parquet``.

Everything after that is the ``contribution`` rule's code, unchanged:
:func:`medmix.evaluation.contribution.write_outputs` computes the clean-test macro AUROC / AUPRC
per subset and seed, the exact Shapley values over the modalities (``v(∅)`` = the constant
predictor's score) and, for MedMIX, the mean fusion weight of each modality over the clean test
samples of its full run; it writes the subset table, the contribution table and both figures.

Usage::

    python tests/benchmarks/bench_iu_sweep.py --cache /tmp/iu_cache --out tests/benchmarks/results \\
        [--methods gbdt medmix] [--seeds 0] [--set gbdt.gbdt_max_bin=63 ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_iu_dev as iu  # noqa: E402

DATASET = "iu_xray_dev"


def subsets(modalities) -> list[tuple[str, ...]]:
    """Every non-empty subset, smallest first."""
    mods = sorted(modalities)
    return [s for k in range(1, len(mods) + 1) for s in itertools.combinations(mods, k)]


def load_subset(cohort, files, committee: list[dict[str, str]], teacher: str | None, subset: tuple[str, ...]):
    """The standardised data of the run restricted to ``subset`` (:func:`select_committee`, as a sweep run)."""
    from medmix.data import Standardizer, from_bundle
    from medmix.features import assemble
    from medmix.plan.runs import RunSpec, select_committee

    full = {m: {"committee": [[e["name"], e.get("role", "general")] for e in committee], "teacher": teacher}
            for m in iu.SECTIONS}
    kept = select_committee(full, RunSpec(name="sweep", method="sweep", modalities=subset), DATASET)
    members = {m: [{"path": files[(m, name)], "role": role} for name, role in e["committee"]] for m, e in kept.items()}
    teachers = {m: {"path": files[(m, e["teacher"])]} for m, e in kept.items() if e["teacher"]} or None
    data = from_bundle(cohort, assemble(cohort.sample_ids, members, teachers))
    return Standardizer.fit(data.split_part("train")).apply(data)


def fit_predict(name: str, params: dict[str, Any], data, seeds: list[int], run: str):
    """Fit on train (choices on validation) and the clean test prediction frame of the run."""
    import pandas as pd

    from medmix.methods import create_method
    from medmix.pipeline.fit import predict_protocols
    from medmix.protocols import Protocol

    t0 = time.perf_counter()
    method = create_method(name, params)
    method.fit(data.split_part("train"), data.split_part("val"), seeds, Protocol("none"))
    seconds = time.perf_counter() - t0
    keys = {"dataset": DATASET, "method": run, "train_protocol": "none", "eval_set": "test"}
    frame = pd.concat(predict_protocols(method, data.split_part("test"), [Protocol("none")], keys),
                      ignore_index=True)
    return frame, seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables and figures")
    parser.add_argument("--data", type=Path, default=iu.ROOT.parent / "shared" / "data" / "iu_xray_dev")
    parser.add_argument("--config", type=Path, default=iu.ROOT / "config.yaml")
    parser.add_argument("--methods", nargs="+", default=["gbdt", "medmix"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="sweep")
    args = parser.parse_args(argv)

    import torch

    from medmix.evaluation.contribution import write_outputs
    from medmix.plan.sweep import subset_label

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    config = iu.load_config(args.config)
    committee, teacher = iu.text_committee(config)
    overrides = {k: iu._parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cohort = iu.build_iu_cohort(args.data)
    files = iu.extract(cohort, args.cache, [e["name"] for e in committee] + ([teacher] if teacher else []),
                       (config.get("experts") or {}).get("settings") or {})
    folder = args.cache / "sweep" / args.tag
    folder.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {DATASET: {}}
    files_out, seconds = [], {}
    for name in args.methods:
        params = iu.method_params(config, name, overrides, args.threads)
        runs = {}
        for subset in subsets(iu.SECTIONS):
            run = name if len(subset) == len(iu.SECTIONS) else f"{name}@{'+'.join(subset)}"
            path = folder / f"{run}.parquet"
            if path.is_file():  # a finished run of this tag is reused
                print(f"{run}: reused {path}", flush=True)
            else:
                frame, sec = fit_predict(name, params, load_subset(cohort, files, committee, teacher, subset),
                                         args.seeds, run)
                frame.to_parquet(path)
                seconds[run] = sec
                print(f"{run}: fitted in {sec:.1f}s", flush=True)
            runs[subset_label(frozenset(subset))] = run
            files_out.append(path)
        plan[DATASET][name] = {"modalities": sorted(iu.SECTIONS), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    names = {"sweep_md": "subsets.md", "sweep_csv": "subsets.csv", "sweep_png": "subsets.png",
             "contribution_md": "contribution.md", "contribution_csv": "contribution.csv",
             "contribution_png": "contribution.png"}
    out = {k: args.out / f"iu_dev_{v}" for k, v in names.items()}
    write_outputs(files_out, plan, {DATASET: "multilabel"}, args.seeds, out)
    report = "\n\n".join([
        f"# IU X-ray dev: modality-subset sweep and Shapley values ({', '.join(args.methods)}; seeds {args.seeds})",
        "Written by `tests/benchmarks/bench_iu_sweep.py` (command: `python tests/benchmarks/bench_iu_sweep.py "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`). Tables and figures by "
        "`medmix.evaluation.contribution.write_outputs` (the `contribution` rule's code); ★ marks single-modality "
        "subsets. Figures: `iu_dev_subsets.png`, `iu_dev_contribution.png`.",
        out["sweep_md"].read_text(), out["contribution_md"].read_text(),
        "Fit seconds of the runs fitted in this invocation (shared 2-core machine): "
        + (", ".join(f"`{k}` {v:.0f}" for k, v in seconds.items()) or "none (all reused)")])
    (args.out / "iu_dev_sweep.md").write_text(report + "\n")
    print(report)
    return {"plan": plan, "seconds": seconds, "outputs": out}


if __name__ == "__main__":
    main()
