"""The demo cohorts' note modality under a text committee: does a committee change hurt the demo?

For each synthetic demo cohort of ``config.yaml`` that has a note (``demo_openi``: cxr,
``demo_mimic``: icu; same size and generator seed as the config), the cohort is generated
(:func:`medmix.demo.generate_cohort`), reduced to its ``note`` modality (the only one a text
committee touches), every expert of the committee (and the teacher) is run on the notes, the
features are standardised on the training split and every method is fitted with the config's
``training`` section, seeds = the config's ``seeds``. Prints test macro AUROC / AUPRC per seed
(thresholds from validation) and mean ± std, per cohort and method.

Usage::

    python tests/benchmarks/bench_demo_text.py --cache /tmp/demo_text \\
        [--committee text_keywords minilm_l6 rag_minilm] [--teacher minilm_l6] [--methods medmix linear_probe]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script: its own folder (tests/benchmarks) is on sys.path.
from bench_iu_dev import _rag_settings, evaluate, load_config, method_params, text_committee

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"cxr": ["effusion", "opacity", "interstitial", "cardiomegaly"],
          "icu": ["mortality", "long_stay", "readmission"]}
TASKS = {"cxr": "multilabel", "icu": "multitask"}


def note_data(config: dict[str, Any], name: str, cache: Path, committee: list[str], teacher: str | None):
    from extractors.registry import create_extractor, get_spec
    from extractors.runner import run_extraction
    from medmix.data import Standardizer, from_bundle
    from medmix.datasets import build_cohort
    from medmix.demo import generate_cohort
    from medmix.features import assemble

    spec = config["demo"]["cohorts"][name]
    root = cache / name
    if not (root / "manifest.csv").is_file():
        generate_cohort(root, spec["kind"], int(spec["n_patients"]), int(spec["seed"]), bool(spec.get("shift", False)))
    cfg = {"adapter": "manifest", "manifest": str(root / "manifest.csv"), "split_column": "split",
           "task": TASKS[spec["kind"]], "labels": LABELS[spec["kind"]],
           "modalities": {"note": {"kind": "text", "column": "note"}}}
    cohort = build_cohort(name, cfg, root)
    files = {}
    for expert in dict.fromkeys([*committee, *([teacher] if teacher else [])]):
        path = root / "features" / f"{expert}.parquet"
        if not path.is_file():
            settings = _rag_settings(cache, expert) if get_spec(expert).role == "rag" else {}
            path.parent.mkdir(parents=True, exist_ok=True)
            run_extraction(create_extractor(expert, settings), cohort.sample_ids, cohort.inputs("note"), str(path))
        files[expert] = path
    members = {"note": [{"path": files[e], "role": get_spec(e).role} for e in committee]}
    teachers = {"note": {"path": files[teacher]}} if teacher else None
    data = from_bundle(cohort, assemble(cohort.sample_ids, members, teachers))
    return Standardizer.fit(data.split_part("train")).apply(data)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--committee", nargs="+", help="text experts (default: the config profile's)")
    parser.add_argument("--teacher", help="text teacher (default: the profile's; 'none' for none)")
    parser.add_argument("--methods", nargs="+", default=["medmix", "linear_probe"])
    parser.add_argument("--cohorts", nargs="+", default=["demo_openi", "demo_mimic"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from medmix.methods import create_method
    from medmix.protocols import Protocol

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config)
    committee, teacher = text_committee(config)
    names = args.committee or [e["name"] for e in committee]
    if args.teacher:
        teacher = None if args.teacher == "none" else args.teacher
    seeds = [int(s) for s in config.get("seeds", [0, 1, 2])]
    print(f"committee {names}, teacher {teacher}, seeds {seeds}")
    print("| cohort | method | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | fit s |")
    print("|---|---|---|" + "---|" * len(seeds) + "---|---|")
    out = {}
    for cohort in args.cohorts:
        data = note_data(config, cohort, args.cache, names, teacher)
        train, val, test = (data.split_part(s) for s in ("train", "val", "test"))
        for name in args.methods:
            t = time.perf_counter()
            method = create_method(name, method_params(config, name, {}, args.threads))
            method.fit(train, val, seeds, Protocol("none"))
            seconds = time.perf_counter() - t
            rows = evaluate(method, val, test)
            out[(cohort, name)] = rows
            for metric in ("auroc", "auprc"):
                v = np.array([r[metric] for r in rows])
                print(f"| {cohort} | {name} | {metric} | " + " | ".join(f"{x:.4f}" for x in v)
                      + f" | {v.mean():.4f} ± {v.std(ddof=1):.4f} | {seconds:.1f} |", flush=True)
    return out


if __name__ == "__main__":
    main()
