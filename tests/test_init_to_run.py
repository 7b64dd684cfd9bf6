"""Your data in two commands: ``medmix init`` writes a config for a manifest cohort, and
``snakemake --cores 2 all --configfile <it>`` runs that cohort alone (medmix.plan.overlay: a config that
declares its own datasets inherits none of the demo's); the plain default still plans the demo
exactly as before the overlay rule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from workflow_helpers import job_counts

REPO = Path(__file__).resolve().parents[1]

#: `snakemake -n --cores 2 all` of the default config.yaml, measured before the overlay rule existed
#: (the same jobs, wildcards included, after it; 113 since CP-IMoE's stages are one job per protocol).
DEFAULT_PLAN = {
    "demo_cohort": 3, "kb_ingest": 1, "prepare_dataset": 3, "rag_index": 1, "extract": 33, "fit": 61, "stages": 5,
    "evaluate_demo_mimic": 1, "evaluate_demo_openi": 1, "contribution": 1, "cpimoe_tables": 1, "tables": 1, "all": 1,
}


def run_snakemake(workdir: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,  # as you run it there
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_cohort(folder: Path, n: int = 40, seed: int = 0, split: bool = False) -> None:
    """``n`` rows: a PNG, a note file, a series CSV, age (numeric), sex (categorical), a patient column,
    two binary labels the inputs carry, and (``split``) a patient-level split column."""
    rng = np.random.default_rng(seed)
    for sub in ("img", "notes", "ts"):
        (folder / sub).mkdir(parents=True)
    rows = []
    for i in range(n):
        y1, y2 = int(rng.random() < 0.5), int(rng.random() < 0.4)
        img = rng.normal(90 + 60 * y1, 12, (24, 24)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img, mode="L").save(folder / "img" / f"{i}.png")
        (folder / "notes" / f"{i}.txt").write_text("small effusion on the left" if y1 else "lungs are clear")
        series = rng.normal(y2, 1, (10, 4))
        pd.DataFrame(series, columns=["hr", "sbp", "spo2", "temp"]).to_csv(folder / "ts" / f"{i}.csv", index=False)
        row = {"sample_id": f"s{i}", "patient_id": f"p{i // 2}", "xray": f"img/{i}.png",
               "note_file": f"notes/{i}.txt" if i % 6 else "", "ehr": f"ts/{i}.csv",
               "age": 50 + (i * 7) % 30 + 10 * y2, "sex": ("F", "M")[i % 2], "effusion": y1, "readmission": y2}
        if split:
            row["split"] = ("train", "train", "train", "val", "test")[(i // 2) % 5]
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)


def medmix_init(workdir: Path, *args: str) -> str:
    """`medmix init` in ``workdir`` (beside a copy of the default config.yaml); its stdout."""
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    proc = subprocess.run([sys.executable, "-m", "medmix.cli", "init", *args], cwd=workdir, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_plain_default_plans_the_demo_as_before(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    out = run_snakemake(tmp_path, "-n", "--cores", "2", "all")
    assert job_counts(out.stdout + out.stderr) == DEFAULT_PLAN


def test_generated_config_plans_its_cohort_alone(tmp_path):
    write_cohort(tmp_path / "site_a", split=True)
    stdout = medmix_init(tmp_path, "--manifest", "site_a/manifest.csv", "--labels", "effusion", "readmission",
                         "--out", "site_a.yaml")
    assert "dataset site_a" in stdout
    cfg = yaml.safe_load((tmp_path / "site_a.yaml").read_text())
    assert cfg["datasets"]["site_a"]["split_column"] == "split"
    out = run_snakemake(tmp_path, "-n", "--cores", "2", "all", "--configfile", "site_a.yaml")
    text = out.stdout + out.stderr
    jobs = job_counts(text)
    assert "demo_cohort" not in jobs and jobs["prepare_dataset"] == 1 and jobs["evaluate_site_a"] == 1
    assert not [rule for rule in jobs if rule.startswith("evaluate_demo")]
    assert "demo_openi" not in text and "demo_mimic" not in text
    # xray: 2 image experts; note_file: 5 text experts (+ the MiniLM teacher, also a member); ehr: 3; tabular: 1.
    assert jobs["extract"] == 2 + 5 + 3 + 1
    assert jobs["contribution"] == 1  # the sweep runs over the new cohort


def test_init_and_run_in_a_folder_of_your_own(tmp_path):
    """No Snakefile and no config.yaml here: `medmix init` merges over the workflow's own config.yaml and
    prints the command with `-s`; Snakemake run here picks the same base; `medmix info` too."""
    write_cohort(tmp_path / "site_b")
    proc = subprocess.run([sys.executable, "-m", "medmix.cli", "init", "--manifest", "site_b/manifest.csv",
                           "--labels", "effusion", "--out", "site_b.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    command = f"snakemake -s {REPO / 'Snakefile'} --cores 8 all --configfile site_b.yaml"
    assert f"next: {command}" in proc.stdout
    header = (tmp_path / "site_b.yaml").read_text()
    assert f"#   {command}\n" in header and f"Merged over {REPO / 'config.yaml'} " in header
    assert not (tmp_path / "config.yaml").exists()
    out = run_snakemake(tmp_path, "-n", "--cores", "2", "all", "--configfile", "site_b.yaml")
    jobs = job_counts(out.stdout + out.stderr)
    assert jobs["prepare_dataset"] == 1 and jobs["evaluate_site_b"] == 1 and "demo_cohort" not in jobs
    info = subprocess.run([sys.executable, "-m", "medmix.cli", "info", "--config", "site_b.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    assert f"config: {REPO / 'config.yaml'} + site_b.yaml (valid)" in info.stdout


def test_a_foreign_config_yaml_here_is_named_in_the_error(tmp_path):
    """A config.yaml of another tool in the run folder is the base: the error names the files merged."""
    (tmp_path / "config.yaml").write_text("foo: 1\n")
    (tmp_path / "mine.yaml").write_text("seeds: [0]\n")
    with pytest.raises(AssertionError) as failed:
        run_snakemake(tmp_path, "-n", "--cores", "2", "all", "--configfile", "mine.yaml")
    assert "unknown key 'foo'" in str(failed.value)
    assert f"(from config.yaml + {tmp_path / 'mine.yaml'} in {tmp_path}; the base is config.yaml" in str(failed.value)


@pytest.mark.slow
def test_init_then_run_the_cohort_alone(tmp_path):
    write_cohort(tmp_path / "cohort")
    medmix_init(tmp_path, "--manifest", "cohort/manifest.csv", "--labels", "effusion", "readmission",
                "--name", "mydata", "--out", "configs/mydata.yaml")
    run_snakemake(tmp_path, "--cores", "2", "all", "--configfile", "configs/mydata.yaml",
                  "--config", "methods=[meanavg,medmix,linear_probe]", "sweep={methods: []}")
    metrics = pd.read_csv(tmp_path / "results/tables/metrics.csv")
    assert set(metrics.dataset) == {"mydata"} and set(metrics.method) == {"meanavg", "medmix", "linear_probe"}
    assert metrics.auroc.between(0, 1).all()
    main = (tmp_path / "results/tables/main.md").read_text()
    assert "mydata" in main and "demo_" not in main
    assert not (tmp_path / "resources/demo").exists()
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if (p / "summary.json").exists()) == ["mydata"]
