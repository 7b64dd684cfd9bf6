"""Bring-your-own-data end to end: a manifest-defined cohort through the real workflow, and the
paper profile's plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from workflow_helpers import REPO, manifest_config, planned_jobs, small_config, snakemake, write_manifest_cohort

from medmix.store import read_features


@pytest.mark.slow
def test_manifest_cohort_end_to_end(tmp_path):
    write_manifest_cohort(tmp_path / "cohort")
    cfg = small_config()
    cfg["methods"] = ["medmix"]
    cfg["training"].update({"max_epochs": 3, "patience": 2})
    cfg["experts"]["profiles"]["demo"]["tabular"] = {"committee": [{"name": "tabular_raw", "role": "general"}]}
    cfg["experts"]["settings"] = {"tabular_raw": {"preprocessing": {"n_features": 2}}}
    cfg["datasets"] = {"mycohort": {
        "adapter": "manifest", "manifest": "cohort/manifest.csv", "id_column": "sid", "patient_column": "pid",
        "split_ratios": [0.6, 0.2, 0.2], "task": "binary", "labels": ["outcome"],
        "modalities": {"xray": {"kind": "image", "column": "image"}, "note": {"kind": "text", "column": "note"},
                       "ehr": {"kind": "timeseries", "column": "series"},
                       "vitals": {"kind": "tabular", "columns": ["age", "bmi"]}},
    }}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--cores", "2", "all")
    summary = json.loads((tmp_path / "results/mycohort/summary.json").read_text())
    assert summary["splits"]["all"]["samples"] == 60
    xray = read_features(tmp_path / "results/mycohort/features/xray/image_texture.parquet")
    assert len(xray.sample_ids) == 60 and (~xray.present).sum() == 9  # every 7th file is absent
    note = read_features(tmp_path / "results/mycohort/features/note/minilm_l6.parquet")
    assert (~note.present).sum() == 12  # empty notes
    metrics = pd.read_csv(tmp_path / "results/tables/metrics.csv")
    assert set(metrics.dataset) == {"mycohort"} and metrics.auroc.between(0, 1).all()
    assert "mycohort — test" in (tmp_path / "results/tables/main.md").read_text()
    # `medmix cache ls` agrees with the workflow: every file it just wrote is fresh for its config.
    proc = subprocess.run([sys.executable, "-m", "medmix.cli", "cache", "ls"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("mycohort ")]
    assert len(rows) == len(list((tmp_path / "results/mycohort/features").glob("*/*.parquet"))) >= 4
    assert {row[-1] for row in rows} == {"fresh"}, proc.stdout


def test_paper_profile_plans_every_expert(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["experts"]["profile"] = "paper"
    cfg["rag"].update({"knowledge_base": "medlineplus",
                       "medlineplus_dir": str(REPO.parent / "shared/data/medlineplus")})
    jobs = planned_jobs(tmp_path, cfg)
    # demo_openi: 3 modalities x 4 (3 experts + teacher); demo_mimic(+_ext): 4 modalities x 4, less MOIRAI.
    assert jobs["extract"] == 12 + 2 * (16 - 1)
    assert jobs["moirai_export"] == jobs["moirai_embed"] == jobs["moirai_features"] == 2
    # Image-like modalities need reports (MAIRA-2 for CXR, Merlin for CT): openi 2, mimic 2, ext 2.
    assert jobs["bridge"] == 6
    assert jobs["rag_index"] == 1 and jobs["kb_ingest"] == 1


@pytest.mark.slow
def test_labels_rerun_fusion_only_and_inputs_rerun_their_extraction(tmp_path):
    """Reruns follow the data, not the labels: the plan of each edit, then a real run of the label edit."""
    write_manifest_cohort(tmp_path / "cohort", n=30)
    cfg = manifest_config(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--cores", "2", "all")
    assert planned_jobs(tmp_path, cfg) == {}
    feature = tmp_path / "results/mycohort/features/xray/image_texture.parquet"
    meta = json.loads(pq.read_schema(feature).metadata[b"medmix"])
    assert len(meta["input_fingerprint"]) == 64

    manifest = tmp_path / "cohort/manifest.csv"
    table = pd.read_csv(manifest, keep_default_na=False)
    table.loc[3, "outcome"] = 1 - int(table.loc[3, "outcome"])  # one label edited
    table.to_csv(manifest, index=False)
    jobs = planned_jobs(tmp_path, cfg)
    assert "extract" not in jobs, jobs
    assert jobs.get("prepare_dataset") == 1 and jobs.get("fit") == 1 and jobs.get("evaluate_mycohort") == 1
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results/mycohort/features").rglob("*.parquet")}
    snakemake(tmp_path, "--cores", "2", "all")
    assert {p: p.stat().st_mtime_ns for p in before} == before  # no feature file was rewritten
    assert planned_jobs(tmp_path, cfg) == {}

    # one input file replaced in place (same path): only that modality's extraction reruns
    Image.fromarray(np.full((32, 32), 9, np.uint8), mode="L").save(tmp_path / "cohort/img/1.png")
    jobs = planned_jobs(tmp_path, cfg)
    assert jobs.get("extract") == 2 and "prepare_dataset" not in jobs, jobs  # xray x 2 image experts

    # a note edited in the manifest: the cohort and the note's extraction rerun, the images' do not
    snakemake(tmp_path, "--cores", "2", "all")
    table = pd.read_csv(manifest, keep_default_na=False)
    table.loc[1, "note"] = "a new note"
    table.to_csv(manifest, index=False)
    jobs = planned_jobs(tmp_path, cfg)
    assert jobs.get("extract") == 1 and jobs.get("prepare_dataset") == 1, jobs


def _write_wide_cohort(folder, n, seed, sexes=("Male", "Female")):
    """48 series variables with a ``time`` column (irregular, rows shuffled), age and a Male/Female column."""
    rng = np.random.default_rng(seed)
    (folder / "ts").mkdir(parents=True)
    rows = []
    for i in range(n):
        y = int(rng.random() < 0.5)
        times = np.cumsum(rng.uniform(0.5, 2.0, 10))
        series = pd.DataFrame(rng.normal(y, 1, (10, 48)), columns=[f"lab{k}" for k in range(48)])
        series.insert(0, "time", times)
        series.sample(frac=1.0, random_state=i).to_csv(folder / "ts" / f"{i}.csv", index=False)
        rows.append({"sid": f"{folder.name}{i}", "pid": f"{folder.name}p{i}", "outcome": y, "series": f"ts/{i}.csv",
                     "age": 50 + i % 20 + 5 * y, "sex": sexes[i % len(sexes)]})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)


@pytest.mark.slow
def test_wide_series_categorical_column_and_external_cohort_without_split(tmp_path):
    """Issue 12: a 48-variable series with a time column, a Male/Female column and an external
    cohort with no split settings, through extraction, fit, evaluate and tables (cheap experts)."""
    _write_wide_cohort(tmp_path / "dev", n=40, seed=1)
    _write_wide_cohort(tmp_path / "ext", n=12, seed=2, sexes=("Male", "Female", "Other"))
    cfg = manifest_config(tmp_path)
    cfg["experts"]["profiles"]["demo"]["timeseries"] = {"committee": [
        {"name": "ts_minirocket", "role": "biomed"}, {"name": "ts_summary", "role": "general"}]}
    cfg["experts"]["profiles"]["demo"]["tabular"] = {"committee": [{"name": "tabular_raw", "role": "general"}]}
    modalities = {"ehr": {"kind": "timeseries", "column": "series"},
                  "vitals": {"kind": "tabular", "columns": ["age", "sex"], "categorical": ["sex"]}}
    common = {"adapter": "manifest", "id_column": "sid", "patient_column": "pid", "task": "binary",
              "labels": ["outcome"], "modalities": modalities}
    cfg["datasets"] = {
        "dev": {**common, "manifest": "dev/manifest.csv", "split_ratios": [0.6, 0.2, 0.2], "external": ["ext"]},
        "ext": {**common, "manifest": "ext/manifest.csv", "role": "external"},  # no split settings at all
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--cores", "2", "all")

    variables = [f"lab{k}" for k in range(48)]
    for ds in ("dev", "ext"):
        summ = read_features(tmp_path / f"results/{ds}/features/ehr/ts_summary.parquet")
        rocket = read_features(tmp_path / f"results/{ds}/features/ehr/ts_minirocket.parquet")
        assert summ.dim == 6 * 48 and rocket.dim == 512 and summ.present.all() and rocket.present.all()
        assert summ.metadata["variables"] == rocket.metadata["variables"] == variables
        tab = read_features(tmp_path / f"results/{ds}/features/vitals/tabular_raw.parquet")
        assert tab.dim == 1 + 3 + 2  # age | Female, Male, unseen | 2 missing indicators
        assert tab.metadata["input_schema"]["categorical"] == {"sex": ["Female", "Male"]}
    tab = read_features(tmp_path / "results/ext/features/vitals/tabular_raw.parquet")
    other = [i for i, sid in enumerate(tab.sample_ids) if int(sid[3:]) % 3 == 2]
    assert tab.embeddings[other][:, 1:4].tolist() == [[0, 0, 1]] * len(other)  # unseen "Other"
    ext = json.loads((tmp_path / "results/ext/summary.json").read_text())
    assert ext["splits"]["test"]["samples"] == ext["splits"]["all"]["samples"] == 12
    assert "evaluation data" in ext["notes"]["split"]
    metrics = pd.read_csv(tmp_path / "results/tables/metrics.csv")
    assert {"test", "external:ext"} <= set(metrics.eval_set) and metrics.auroc.between(0, 1).all()
    assert "dev → ext (external validation)" in (tmp_path / "results/tables/main.md").read_text()
    assert planned_jobs(tmp_path, cfg) == {}  # the schemas' fingerprints are stable: nothing reruns
