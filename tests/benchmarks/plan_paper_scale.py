"""Plan the workflow at paper scale and time it: ``snakemake -n`` job count and wall time.

Builds, in a scratch folder, three manifest cohorts with real (tiny) input files at roughly the
paper's sizes — an OpenI-like one (frontal + lateral CXR, note), a MIMIC-like one (frontal +
lateral CXR, note, EHR series) with a MIMIC-III-like external cohort, and a ccRCC-like one (CT
volume, whole-slide image, note) — and a config with the paper committee (``experts.profile:
paper``, teachers and RAG experts included), 5 seeds, every registered fusion method, the
Table E7 variants, the modality sweep of gbdt and MedMIX on every development dataset, the
paper's protocol grid (train and test: none, multi-random drop p in {0.1, 0.3, 0.5, 0.7},
one-modality drop of the note, the one modality all three datasets share, p in {0.3, 0.5, 0.7})
and ``--shards`` extraction shards per expert (MOIRAI, run in its own environment, is not
sharded). Then runs ``snakemake -n all`` on it, ``--repeats`` times, and prints the job counts
per rule and the wall time of each dry run (the DAG is built from the sources: no checkpoint
waits, every extraction and fit job is planned).

Nothing is downloaded and no model is loaded: a dry run only plans.

Usage: ``python tests/benchmarks/plan_paper_scale.py [--shards 20] [--scale 1.0] [--repeats 2] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
#: (dataset, samples at scale 1, modalities {name: kind}); sizes of the paper's cohorts, rounded.
COHORTS = {
    "openi_like": (3600, {"frontal": "image", "lateral": "image", "note": "text"}),
    "mimic_like": (10000, {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"}),
    "mimic3_like": (2000, {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"}),
    "ccrcc_like": (600, {"ct": "volume", "slide": "slide", "note": "text"}),
}
SUFFIX = {"image": ".png", "timeseries": ".csv", "volume": ".nii.gz", "slide": ".tiff"}
LABELS = ["y1", "y2", "y3"]


def write_cohort(root: Path, name: str, n: int, modalities: dict[str, str]) -> None:
    """A manifest and one small file per (sample, file modality); the files are only stat'ed."""
    folder = root / name
    for mod, kind in modalities.items():
        if kind in SUFFIX:
            (folder / mod).mkdir(parents=True, exist_ok=True)
    header = "time," + ",".join(f"v{k}" for k in range(17)) + "\n0," + ",".join("0" for _ in range(17)) + "\n"
    rows = []
    for i in range(n):
        row = {"sid": f"{name}_{i}", "pid": f"p{i // 2}", **{y: (i * (k + 3)) % 2 for k, y in enumerate(LABELS)}}
        for mod, kind in modalities.items():
            if kind == "text":
                row[mod] = f"report {i}: no acute findings"
                continue
            rel = f"{mod}/{i}{SUFFIX[kind]}"
            (folder / rel).write_text(header if kind == "timeseries" else "x")
            row[mod] = rel
        rows.append(row)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def paper_config(root: Path, shards: int, scale: float) -> dict:
    from medmix.methods import known_methods

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["seeds"] = [0, 1, 2, 3, 4]
    cfg["demo"] = {"cohorts": {}}
    cfg["experts"]["profile"] = "paper"
    cfg["rag"].update({"knowledge_base": "medlineplus",
                       "medlineplus_dir": str(REPO.parent / "shared/data/medlineplus")})
    # every registered method (not the template entry) and config.yaml's Table E7 variants
    cfg["methods"] = [m for m in known_methods() if "<" not in m] + list(cfg.get("variants") or {})
    cfg["sweep"] = {"methods": ["gbdt", "medmix"], "n_seeds": None}  # every dataset and subset, every seed
    grid = {"none": {"kind": "none"}}
    grid.update({f"random_drop_{int(p * 100)}": {"kind": "random_drop", "p": p} for p in (0.1, 0.3, 0.5, 0.7)})
    grid.update({f"drop_note_{int(p * 100)}": {"kind": "drop_one", "modality": "note", "p": p}
                 for p in (0.3, 0.5, 0.7)})
    cfg["protocols"] = {"train": grid, "test": grid}
    cfg["extraction"] = {"shards": shards}
    cfg["evaluation"] = {"runs_per_job": 20}  # paper-scale runs take seconds each to evaluate: parallel jobs
    cfg["datasets"] = {}
    for name, (n, modalities) in COHORTS.items():
        write_cohort(root, name, max(4, int(n * scale)), modalities)
        ds = {"adapter": "manifest", "manifest": f"{name}/manifest.csv", "id_column": "sid", "patient_column": "pid",
              "task": "multitask", "labels": LABELS,
              "modalities": {m: {"kind": k, "column": m} for m, k in modalities.items()}}
        if name == "mimic3_like":
            ds["role"] = "external"
        else:
            ds["split_ratios"] = [0.7, 0.1, 0.2]
        cfg["datasets"][name] = ds
    cfg["datasets"]["mimic_like"]["external"] = ["mimic3_like"]
    return cfg


def dry_run(workdir: Path) -> tuple[float, float, dict[str, int], str]:
    """(wall seconds, CPU seconds of the snakemake process, jobs per rule, output) of one ``-n``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "-n", "--quiet", "rules", "all"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{text[-4000:]}")
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}
    return wall, cpu, counts, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the cohort sizes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="build the scratch folder here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="medmix_paper_plan_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        cfg = paper_config(root, args.shards, args.scale)
        (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        samples = sum(max(4, int(n * args.scale)) for n, _ in COHORTS.values())
        print(f"cohorts: {samples} samples in {len(COHORTS)} manifests (3 development, 1 external), written in "
              f"{time.perf_counter() - t0:.1f} s; {len(cfg['methods'])} methods, {len(cfg['seeds'])} seeds, "
              f"{len(cfg['protocols']['train'])} train x {len(cfg['protocols']['test'])} test protocols, "
              f"{args.shards} shards per expert")
        walls, cpus = [], []
        for k in range(args.repeats):
            wall, cpu, counts, _ = dry_run(root)
            walls.append(wall)
            cpus.append(cpu)
            total = counts.pop("total", sum(counts.values()))
            print(f"dry run {k + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU, {total} jobs")
        print("jobs per rule: " + ", ".join(f"{r} {c}" for r, c in sorted(counts.items())))
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (wall time "
              "grows with other load; "
              "CPU time does not)")
        print(f"RESULT jobs={total} dry_run_wall_s_min={min(walls):.1f} dry_run_cpu_s_min={min(cpus):.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
