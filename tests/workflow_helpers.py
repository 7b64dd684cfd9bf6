"""Helpers shared by the tests that plan or run the workflow (no test module imports another for them)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from config_helpers import default_config
from PIL import Image


def job_counts(text: str) -> dict[str, int]:
    """Jobs per rule from a Snakemake dry run's output: {} for "Nothing to be done"; otherwise its
    job-count table, and an error when there is none (never a vacuous empty plan)."""
    if "Nothing to be done" in text:
        return {}
    counts, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    if not counts:
        raise AssertionError(f"no job table and not 'Nothing to be done' in the dry run's output:\n{text[-3000:]}")
    return counts


def tiny_predictions(method, train_protocol, signal, rng, n=60):
    """One run's prediction rows on a tiny dataset "dev" (labels a, b; modalities img, note): seeds 0
    and 1, the validation split and the test split under test protocols none, rd30 and note50;
    ``signal`` sets how much the probabilities follow the labels."""
    y = (rng.random((n, 2)) < 0.4).astype(float)
    rows = []
    for seed in (0, 1):
        for eval_set, tests in (("val", ["none"]), ("test", ["none", "rd30", "note50"])):
            for test in tests:
                noise = 0.2 if test != "none" else 0.0
                prob = np.clip(signal * y + (1 - signal - noise) * rng.random((n, 2)) + noise * 0.5, 0, 1)
                rows.append(pd.DataFrame({
                    "dataset": "dev", "method": method, "train_protocol": train_protocol, "cohort": "dev",
                    "eval_set": eval_set, "test_protocol": test, "seed": seed,
                    "sample_id": [f"s{i:02d}" for i in range(n)], "prob:a": prob[:, 0], "prob:b": prob[:, 1],
                    "label:a": y[:, 0], "label:b": y[:, 1], "present:img": np.arange(n) % 3 > 0,
                    "present:note": test != "note50"}))
    return pd.concat(rows, ignore_index=True)


REPO = Path(__file__).resolve().parents[1]


def tiny_config() -> dict:
    cfg = default_config()  # CP-IMoE's grid and the sweep have their own tests
    cfg["seeds"] = [0]
    # A fixed, small set of runs: the tests here are about the DAG, not about every method.
    cfg["methods"] = ["medmix", "medmix_nodistill", "meanavg"]
    cfg["demo"]["cohorts"] = {
        "demo_openi": {"kind": "cxr", "n_patients": 40, "seed": 1},
        "demo_mimic": {"kind": "icu", "n_patients": 40, "seed": 2},
        "demo_mimic_ext": {"kind": "icu", "n_patients": 20, "seed": 3, "shift": True},
    }
    cfg["training"].update({"max_epochs": 4, "warmup_epochs": 1, "patience": 2})
    cfg["protocols"]["test"] = {"none": {"kind": "none"}, "random_drop_50": {"kind": "random_drop", "p": 0.5}}
    return cfg


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900,
              env: dict[str, str] | None = None, source: Path = REPO) -> subprocess.CompletedProcess:
    """Run the workflow of ``source`` (the repository, or a :func:`source_copy` of it) in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(source / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    extra = {"PYTHONPATH": str(source)} if source != REPO else {}  # the copy's packages, not the installed ones
    # cwd: `python -m` puts the working directory first on sys.path, so running from the checkout would
    # import its packages ahead of PYTHONPATH's copy
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                          env={**(env or os.environ), "PYTHONHASHSEED": "0", **extra})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def source_copy(dest: Path) -> Path:
    """A copy of the workflow's sources (mtimes kept) for tests that edit code: the checkout is never
    modified, so a killed test cannot leave it edited."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml", "pyproject.toml"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("workflow", "medmix", "extractors"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def planned_jobs(workdir: Path, cfg: dict, source: Path = REPO) -> dict[str, int]:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(workdir, "-n", "--cores", "2", "all", source=source)
    return job_counts(out.stdout + out.stderr)


def write_manifest_cohort(folder, n=60, seed=0):
    """Small manifest cohort: an image, a note (some empty), a time series and tabular columns."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    (folder / "ts").mkdir()
    rows = []
    for i in range(n):
        y = int(rng.random() < 0.4)
        img = rng.normal(100 + 40 * y, 10, (32, 32)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img, mode="L").save(folder / "img" / f"{i}.png")
        series = rng.normal(0, 1, (12, 46)) + y
        pd.DataFrame(series, columns=[f"v{k}" for k in range(46)]).to_csv(folder / "ts" / f"{i}.csv", index=False)
        rows.append({
            "sid": f"s{i}", "pid": f"p{i // 2}", "outcome": y,
            "image": f"img/{i}.png" if i % 7 else "img/absent.png",  # absent file = missing modality
            "note": "" if i % 5 == 0 else ("effusion present" if y else "lungs clear"),
            "series": f"ts/{i}.csv", "age": 50 + i, "bmi": "" if i % 3 == 0 else 25.0,
        })
    with open(folder / "manifest.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


def small_config() -> dict:
    """The test configuration without the demo: one seed, ``meanavg`` for 2 epochs, no protocols."""
    cfg = default_config()
    cfg["seeds"] = [0]
    cfg["demo"] = {"cohorts": {}}
    cfg["methods"] = ["meanavg"]
    cfg["training"].update({"max_epochs": 2, "warmup_epochs": 1, "patience": 1})
    cfg["protocols"] = {"train": {"none": {"kind": "none"}}, "test": {"none": {"kind": "none"}}}
    return cfg


def manifest_config(tmp_path) -> dict:
    """:func:`small_config` for the cohort :func:`write_manifest_cohort` writes (under ``cohort/``)."""
    cfg = small_config()
    cfg["experts"]["profiles"]["demo"]["text"] = {"committee": [{"name": "text_keywords", "role": "biomed"}]}
    cfg["datasets"] = {"mycohort": {
        "adapter": "manifest", "manifest": "cohort/manifest.csv", "id_column": "sid", "patient_column": "pid",
        "split_ratios": [0.6, 0.2, 0.2], "task": "binary", "labels": ["outcome"],
        "modalities": {"xray": {"kind": "image", "column": "image"}, "note": {"kind": "text", "column": "note"}},
    }}
    return cfg
