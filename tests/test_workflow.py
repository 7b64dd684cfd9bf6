"""End to end: the real Snakemake workflow on a tiny demo configuration.

One module-scoped run is shared by the checks: tables with real numbers, a no-op rerun, what a
config edit replans, and recovery from a run killed during extraction.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from workflow_helpers import REPO, planned_jobs, snakemake, source_copy, tiny_config

from medmix.plan.config import extraction_jobs, validate_config
from medmix.store import read_features

#: Real Snakemake runs of the demo (minutes): in the `slow` set, which CI runs after the default one.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """This module's workflow sources: a copy, so the code-edit tests edit the copy."""
    return source_copy(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, source):
    workdir = tmp_path_factory.mktemp("wf")
    cfg = tiny_config()
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    snakemake(workdir, "--cores", "2", "all", source=source)
    return workdir, cfg, time.perf_counter() - t0


def test_run_writes_tables_with_real_numbers(workflow_run, source):
    workdir, cfg, _ = workflow_run
    metrics = pd.read_csv(workdir / "results/tables/metrics.csv")
    clean = metrics[(metrics.test_protocol == "none")]
    assert set(clean.dataset) == {"demo_openi", "demo_mimic"}
    assert set(clean.eval_set) == {"test", "external:demo_mimic_ext"}
    assert set(clean.method) == set(cfg["methods"])
    for value in clean[["auroc", "auprc", "mf1", "acc"]].to_numpy().ravel():
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    main = (workdir / "results/tables/main.md").read_text()
    assert "demo_openi — test" in main and "external validation" in main
    assert "random_drop_50" in (workdir / "results/tables/robustness.md").read_text()
    assert "## Dataset summary: demo_mimic_ext" in (workdir / "results/tables/datasets.md").read_text()
    tables = workdir / "results/tables"
    assert "| demo_openi | medmix |" in (tables / "table1.md").read_text()
    assert "| demo_openi | medmix_nodistill |" in (tables / "tableE7.md").read_text()
    assert "Not configured" in (tables / "tableE2.md").read_text()  # no train-time drop in the demo grid
    assert set(pd.read_csv(tables / "tableE5.csv").rate) == {0.5}
    assert "external validation" in (tables / "table2.md").read_text()
    assert "| demo_openi | medmix |" in (tables / "tableE6.md").read_text()
    for fig in ("fig2_one_modality_drop", "fig3_random_drop", "fig4_ablation", "fig_per_label_f1", "fig5_efficiency"):
        assert (workdir / f"results/figures/{fig}.png").stat().st_size > 0
    summary = (workdir / "results/demo_mimic/summary.md").read_text()
    assert "ehr" in summary and "ct" in summary
    feats = read_features(workdir / "results/demo_mimic/features/ct/ct_intensity_profile.parquet")
    assert 0 < feats.present.sum() < len(feats.present)  # natural missingness recorded, no sample dropped


def test_report_references_every_table_and_figure(workflow_run, source):
    workdir, _, _ = workflow_run
    snakemake(workdir, "--cores", "1", "--report", "results/report.html", source=source)
    html = (workdir / "results/report.html").read_text(errors="replace")
    for name in ("fig2_one_modality_drop.png", "fig3_random_drop.png", "fig4_ablation.png", "fig_per_label_f1.png",
                 "fig5_efficiency.png", "table1.csv", "tableE6.csv",
                 "tableE5.csv", "significance.csv", "patterns.csv"):
        assert name in html, name


def test_second_run_does_nothing(workflow_run, source):
    workdir, cfg, _ = workflow_run
    assert planned_jobs(workdir, cfg, source) == {}


def test_expert_edit_reruns_only_that_expert(workflow_run, source):
    workdir, cfg, _ = workflow_run
    edited = copy.deepcopy(cfg)
    edited["experts"]["settings"] = {"image_texture": {"preprocessing": {"size": 32}}}
    jobs = planned_jobs(workdir, edited, source)
    # image_texture reads frontal+lateral (demo_openi) and frontal (demo_mimic, demo_mimic_ext).
    assert jobs.get("extract") == 4, jobs
    assert "demo_cohort" not in jobs and "prepare_dataset" not in jobs
    assert jobs.get("fit") == 2 * len(cfg["methods"])  # both development datasets, every method
    # one evaluate job per development dataset (its runs on every cohort)
    assert evaluations(jobs) == {"evaluate_demo_openi": 1, "evaluate_demo_mimic": 1}


def evaluations(jobs: dict[str, int]) -> dict[str, int]:
    """The planned evaluate jobs (one rule per development dataset, ``evaluate_<dataset>``)."""
    return {rule: n for rule, n in jobs.items() if rule.startswith("evaluate_")}


def _planned_after_edit(workdir, cfg, module: Path, source: Path) -> dict[str, int]:
    """The plan after an edit of ``module`` (a file of the ``source`` copy, restored after)."""
    original = module.read_bytes()
    stat = module.stat()
    try:  # Snakemake compares checksums, so the edit must change the content
        module.write_bytes(original + b"\n# an edit\n")
        return planned_jobs(workdir, cfg, source)
    finally:
        module.write_bytes(original)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_an_extractor_module_reruns_only_the_experts_that_import_it(workflow_run, source):
    workdir, cfg, _ = workflow_run
    # ct_intensity_profile's own module: nothing else imports it
    jobs = _planned_after_edit(workdir, cfg, source / "extractors" / "experts" / "ct_profile.py", source)
    assert jobs.get("extract") == 2, jobs  # demo_mimic, demo_mimic_ext
    assert jobs.get("fit") == len(cfg["methods"])  # only demo_mimic's models
    assert evaluations(jobs) == {"evaluate_demo_mimic": 1}  # demo_mimic and its external cohort
    # the texture helper: image_texture (openi frontal + lateral, mimic + ext frontal) and ct_texture25d (2)
    assert _planned_after_edit(workdir, cfg, source / "extractors" / "texture_features.py", source).get("extract") == 6
    assert planned_jobs(workdir, cfg, source) == {}


def test_editing_the_input_reader_reruns_every_expert_reading_through_it(workflow_run, source):
    workdir, cfg, _ = workflow_run
    jobs = _planned_after_edit(workdir, cfg, source / "extractors" / "inputs.py", source)
    assert jobs.get("extract") == len(extraction_jobs(validate_config(copy.deepcopy(cfg)))), jobs
    assert "prepare_dataset" not in jobs and "demo_cohort" not in jobs
    # the runner is declared plumbing (medmix.plan.code_closure.NOT_OUTPUT_AFFECTING): its edit reruns nothing
    assert _planned_after_edit(workdir, cfg, source / "extractors" / "runner.py", source) == {}


def test_editing_a_method_module_reruns_only_that_methods_fits(workflow_run, source):
    workdir, cfg, _ = workflow_run
    # medmix/methods/medmix.py is read by medmix and medmix_nodistill only (not by meanavg)
    jobs = _planned_after_edit(workdir, cfg, source / "medmix" / "methods" / "medmix.py", source)
    assert "extract" not in jobs and "prepare_dataset" not in jobs, jobs
    assert jobs.get("fit") == 2 * 2, jobs  # medmix + medmix_nodistill on both development datasets
    assert evaluations(jobs) == {"evaluate_demo_openi": 1, "evaluate_demo_mimic": 1}
    assert jobs.get("tables") == 1


def test_editing_the_tables_code_reruns_only_the_tables(workflow_run, source):
    workdir, cfg, _ = workflow_run
    jobs = _planned_after_edit(workdir, cfg, source / "medmix" / "evaluation" / "paper_tables.py", source)
    assert set(jobs) - {"all"} == {"tables"}, jobs


def test_a_new_train_protocol_plans_its_fits_only(workflow_run, source):
    workdir, cfg, _ = workflow_run
    edited = copy.deepcopy(cfg)
    edited["protocols"]["train"]["drop_one_note_50"] = {"kind": "drop_one", "modality": "note", "p": 0.5}
    jobs = planned_jobs(workdir, edited, source)
    assert "extract" not in jobs and "prepare_dataset" not in jobs, jobs
    # every run under the new protocol on both development datasets (both have a note), nothing refitted
    assert jobs.get("fit") == 2 * len(cfg["methods"]), jobs
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_adding_a_test_protocol_or_external_cohort_plans_no_fit(workflow_run, source):
    workdir, cfg, _ = workflow_run
    edited = copy.deepcopy(cfg)
    edited["protocols"]["test"]["random_drop_30"] = {"kind": "random_drop", "p": 0.3}
    jobs = planned_jobs(workdir, edited, source)
    assert "fit" not in jobs and "extract" not in jobs, jobs
    assert evaluations(jobs) == {"evaluate_demo_openi": 1, "evaluate_demo_mimic": 1}
    edited = copy.deepcopy(cfg)
    edited["demo"]["cohorts"]["demo_openi_ext"] = {"kind": "cxr", "n_patients": 20, "seed": 5, "shift": True}
    edited["datasets"]["demo_openi_ext"] = {**cfg["datasets"]["demo_openi"], "role": "external",
                                            "manifest": "resources/demo/demo_openi_ext/manifest.csv"}
    edited["datasets"]["demo_openi"]["external"] = ["demo_openi_ext"]
    jobs = planned_jobs(workdir, edited, source)
    assert "fit" not in jobs, jobs
    assert evaluations(jobs) == {"evaluate_demo_openi": 1}  # the dataset the new cohort belongs to
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_evaluation_in_parts_plans_one_job_per_part_and_no_fit(workflow_run, source):
    workdir, cfg, _ = workflow_run
    edited = copy.deepcopy(cfg)
    edited["evaluation"] = {"runs_per_job": 2}
    jobs = planned_jobs(workdir, edited, source)
    assert "fit" not in jobs and "extract" not in jobs, jobs
    # 3 runs per development dataset in parts of 2: runs 0-1 and run 2
    assert evaluations(jobs) == {f"evaluate_{d}_{k}": 1 for d in ("demo_openi", "demo_mimic") for k in (0, 1)}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_replacing_an_input_file_in_place_reruns_its_extraction(workflow_run, source):
    workdir, cfg, _ = workflow_run
    image = sorted((workdir / "resources/demo/demo_openi/images").glob("*_frontal.png"))[0]
    original, stat = image.read_bytes(), image.stat()
    try:
        Image.fromarray(np.full((64, 64), 7, np.uint8)).save(image)
        jobs = planned_jobs(workdir, cfg, source)
    finally:
        image.write_bytes(original)
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert jobs.get("extract") == 2, jobs  # demo_openi frontal x 2 image experts
    assert jobs.get("fit") == len(cfg["methods"]) and "prepare_dataset" not in jobs
    assert planned_jobs(workdir, cfg, source) == {}


def test_predictions_carry_their_run_and_evaluation_is_reproducible(workflow_run, source):
    workdir, cfg, _ = workflow_run
    run = workdir / "results/demo_mimic/runs/medmix/none"
    ext = pd.read_parquet(run / "predictions/demo_mimic_ext.parquet")
    assert {"dataset", "method", "train_protocol", "test_protocol", "cohort", "eval_set", "seed"} <= set(ext.columns)
    assert set(ext.cohort) == {"demo_mimic_ext"} and set(ext.dataset) == {"demo_mimic"}
    assert set(ext.eval_set) == {"external:demo_mimic_ext"}
    own = pd.read_parquet(run / "predictions/demo_mimic.parquet")
    assert set(own.eval_set) == {"val", "test"} and set(own[own.eval_set == "val"].test_protocol) == {"none"}
    saved = sorted(p.name for p in (run / "model").iterdir() if not p.name.startswith("."))
    assert saved == ["method.json", "seed0.safetensors", "standardizer.safetensors"]


def test_runtime_settings_plan_no_extraction(workflow_run, source):
    workdir, cfg, _ = workflow_run
    edited = copy.deepcopy(cfg)
    edited["experts"]["settings"] = {"minilm_l6": {"batch_size": 7, "device": "cpu"}}
    assert planned_jobs(workdir, edited, source) == {}
    edited["training"]["batch_size"] = 64
    jobs = planned_jobs(workdir, edited, source)
    assert "extract" not in jobs and jobs.get("fit") == len(cfg["methods"]) * 2
    assert evaluations(jobs) == {"evaluate_demo_openi": 1, "evaluate_demo_mimic": 1}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_kill_during_extraction_then_resume(tmp_path, sig):
    cfg = tiny_config()
    cfg["datasets"] = {"demo_openi": cfg["datasets"]["demo_openi"]}
    cfg["demo"]["cohorts"] = {"demo_openi": cfg["demo"]["cohorts"]["demo_openi"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", "features"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    features = tmp_path / "results"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(features.rglob("features/*/*.parquet"))) < 2:
        assert proc.poll() is None, "snakemake ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    done = list(features.rglob("features/*/*.parquet"))
    # SIGTERM lets Snakemake delete the outputs of jobs it had not seen finish; SIGKILL cannot.
    n_files = len(extraction_jobs(validate_config(copy.deepcopy(cfg))))
    assert len(done) < n_files, "the kill did not land during extraction"
    for f in done:  # everything that exists is complete and readable
        read_features(f)
    if sig == signal.SIGKILL:
        # A hard kill leaves Snakemake's lock and incomplete markers: the documented recovery.
        snakemake(tmp_path, "--unlock")
        snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", "features")
    else:
        snakemake(tmp_path, "--cores", "2", "features")
    final = list(features.rglob("features/*/*.parquet"))
    assert len(final) == n_files
    for f in final:
        read_features(f)
    # Temp files of killed writers are gone once their targets are written again.
    assert not list(features.rglob("features/*/.*.tmp"))


def _one_dataset_config() -> dict:
    cfg = tiny_config()
    cfg["datasets"] = {"demo_openi": cfg["datasets"]["demo_openi"]}
    cfg["demo"]["cohorts"] = {"demo_openi": cfg["demo"]["cohorts"]["demo_openi"]}
    return cfg


def _run_until(tmp_path: Path, ready, sig) -> None:
    """Start ``snakemake all`` in ``tmp_path`` and send ``sig`` to its process group once ``ready()``."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", "all"]
    # A background job of a non-interactive shell starts with SIGINT ignored, and so would Snakemake and
    # its jobs: give them the default disposition, as under an interactive Ctrl-C.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while time.time() < deadline and not ready():
        assert proc.poll() is None, "snakemake ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)


def _resume(tmp_path: Path, sig) -> None:
    """The documented recovery: a hard kill leaves Snakemake's lock (``--unlock``); a kill or Ctrl-C
    during a job leaves it marked incomplete (``--rerun-incomplete`` reruns exactly those jobs)."""
    if sig == signal.SIGKILL:
        snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", "all")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
@pytest.mark.parametrize("stage", ["fit", "evaluate"])
def test_interrupt_during_fit_or_evaluate_then_resume(tmp_path, sig, stage):
    """Ctrl-C or a hard kill while models train or predictions are written: what exists is complete, and
    the resumed run finishes with every model and prediction readable."""
    from medmix.methods import load_method

    cfg = _one_dataset_config()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "results" / "demo_openi" / "runs"
    if stage == "fit":
        ready = lambda: len(list(runs.glob("*/*/fit.json"))) >= 1  # noqa: E731
    else:  # the evaluate job has started (its log exists) and is importing or predicting
        ready = lambda: (tmp_path / "logs" / "evaluate" / "evaluate_demo_openi.log").exists()  # noqa: E731
    _run_until(tmp_path, ready, sig)
    assert not (tmp_path / "results" / "tables" / "table1.md").exists(), "the interrupt did not land before the end"
    if stage == "fit":
        assert len(list(runs.glob("*/*/fit.json"))) < len(cfg["methods"]), "the interrupt did not land during fit"
    for info in runs.glob("*/*/fit.json"):  # a finished fit's model is complete
        json.loads(info.read_text())
        load_method(info.parent / "model")
    for pred in runs.glob("*/*/predictions/*.parquet"):
        assert len(pd.read_parquet(pred)) > 0
    _resume(tmp_path, sig)
    assert len(list(runs.glob("*/none/fit.json"))) == len(cfg["methods"])
    for pred in runs.glob("*/*/predictions/*.parquet"):
        assert len(pd.read_parquet(pred)) > 0
    assert "| demo_openi | medmix |" in (tmp_path / "results" / "tables" / "table1.md").read_text()
    assert not list(runs.rglob(".*.tmp"))
