"""Scale-out: sharded extraction, job resources, device selection, cluster profiles.

Fast checks run the job bodies directly; the ``slow`` ones run the real workflow (locally,
through Snakemake's cluster-generic executor with a local submit script, and dry runs of the
slurm / kubernetes profiles).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from config_helpers import default_config
from PIL import Image
from workflow_helpers import job_counts

from extractors.base import ExtractionFailedError
from extractors.job import default_batch_size, extract_job, merge_job
from medmix.plan.config import ConfigError, expert_shards, extraction_resources, validate_config
from medmix.store import FeatureStoreError, read_features
from medmix.store.inputs import InputView, write_input_view
from medmix.store.shards import merge_parts, part_path, shard_of, shard_rows

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"model_id": None, "revision": None, "preprocessing": {}}


# ----------------------------------------------------------------------------- shard assignment
def test_shard_of_is_stable_across_processes_and_balanced():
    ids = [f"s{i}" for i in range(2000)]
    here = [shard_of(s, 4) for s in ids]
    code = "from medmix.store.shards import shard_of; print([shard_of(f's{i}', 4) for i in range(2000)])"
    for seed in ("1", "2"):  # Python's own hash() would differ between these
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(out.stdout) == here
    counts = np.bincount(here, minlength=4)
    assert counts.min() > 400 and counts.max() < 600, counts  # ~500 each
    rows = shard_rows(ids, 4)
    assert sorted(i for r in rows for i in r) == list(range(2000))
    assert all(here[i] == k for k, r in enumerate(rows) for i in r)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shard_of("x", 0)


# ----------------------------------------------------------------------------- job bodies
def _image_view(tmp_path: Path, n: int = 40, bad=(), absent=()) -> str:
    """An input view of PNG files (``bad``: unreadable files, ``absent``: missing inputs)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(exist_ok=True)
    values = []
    for i in range(n):
        path = tmp_path / "img" / f"{i}.png"
        if i in bad:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), mode="L").save(path)
        values.append(None if i in absent else str(path))
    view = InputView("toy", [f"s{i}" for i in range(n)], {"xray": "image"}, {"xray": values})
    write_input_view(tmp_path / "inputs.parquet", view)
    return str(tmp_path / "inputs.parquet")


@pytest.mark.parametrize("expert", ["image_texture", "image_intensity_grid"])
def test_sharded_extraction_merges_into_the_unsharded_file(tmp_path, expert):
    inputs = _image_view(tmp_path, bad=(3, 17), absent=(5, 30))
    extract_job(inputs, "xray", expert, str(tmp_path / "whole.parquet"), IDENTITY, {})
    parts = [str(tmp_path / f"{k}-of-3.parquet") for k in range(3)]
    for k, part in enumerate(parts):
        extract_job(inputs, "xray", expert, part, IDENTITY, {}, shard=k, shards=3)
        assert read_features(part).metadata["shard"] == k
    merge_job(inputs, "xray", parts, str(tmp_path / "merged.parquet"))
    whole, merged = read_features(tmp_path / "whole.parquet"), read_features(tmp_path / "merged.parquet")
    assert merged.sample_ids == whole.sample_ids
    assert np.array_equal(merged.present, whole.present) and (~merged.present).sum() == 4
    assert np.array_equal(merged.embeddings, whole.embeddings)
    differ = {k for k in set(whole.metadata) | set(merged.metadata) if whole.metadata.get(k) != merged.metadata.get(k)}
    assert differ == {"shards"}, differ  # same fingerprint, input hash, failure reasons and samples
    assert set(merged.metadata["failed_samples"]) == {"s3", "s17"}


def test_a_changed_input_changes_only_its_shards_fingerprint(tmp_path):
    inputs = _image_view(tmp_path)
    for k in range(3):
        extract_job(inputs, "xray", "image_texture", str(tmp_path / f"a{k}.parquet"), IDENTITY, {}, shard=k, shards=3)
    Image.fromarray(np.zeros((24, 24), np.uint8), mode="L").save(tmp_path / "img" / "7.png")  # same path
    for k in range(3):
        extract_job(inputs, "xray", "image_texture", str(tmp_path / f"b{k}.parquet"), IDENTITY, {}, shard=k, shards=3)
    changed = [k for k in range(3) if read_features(tmp_path / f"a{k}.parquet").metadata["input_fingerprint"]
               != read_features(tmp_path / f"b{k}.parquet").metadata["input_fingerprint"]]
    assert changed == [shard_of("s7", 3)]


def test_merge_refuses_parts_of_another_view_or_order(tmp_path):
    inputs = _image_view(tmp_path, n=12)
    parts = [str(tmp_path / f"{k}.parquet") for k in range(2)]
    for k, part in enumerate(parts):
        extract_job(inputs, "xray", "image_texture", part, IDENTITY, {}, shard=k, shards=2)
    ids = [f"s{i}" for i in range(12)]
    with pytest.raises(FeatureStoreError, match="expected shard 0 of 2"):
        merge_parts(parts[::-1], ids, [None] * 12, tmp_path / "m.parquet", "fp")
    grown = [*ids, "s_new"]  # the view gained a sample the parts have never seen
    with pytest.raises(FeatureStoreError, match=r"1\.parquet|0\.parquet") as err:
        merge_parts(parts, grown, [None] * 13, tmp_path / "m.parquet", "fp")
    assert "s_new" in str(err.value) and "rerun its extraction" in str(err.value)
    assert not (tmp_path / "m.parquet").exists()


def test_a_shard_whose_inputs_mostly_fail_fails_its_job(tmp_path):
    inputs = _image_view(tmp_path, n=20, bad=tuple(range(20)))
    out = tmp_path / "p.parquet"
    with pytest.raises(ExtractionFailedError, match="Nothing was written"):
        extract_job(inputs, "xray", "image_texture", str(out), IDENTITY, {}, shard=1, shards=2)
    assert not out.exists()


def test_part_path_names_the_shard_count():
    assert part_path("d", "m", "e", 3, 20) == "results/d/feature_shards/m/e/3-of-20.parquet"


# ----------------------------------------------------------------------------- config and resources
def _config(**extraction) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["extraction"] = extraction
    return validate_config(cfg)


def test_resources_follow_the_registry_and_config_overrides():
    cfg = _config(shards=4, experts={"image_texture": {"mem_mb": 900, "shards": 1}})
    gpu_expert = extraction_resources(cfg, "biomedclip")
    assert gpu_expert == {"threads": 1, "mem_mb": 3000, "runtime": 15, "gpu": 1}  # 60 min over 4 shards
    assert extraction_resources(cfg, "minilm_l6")["gpu"] == 0  # CPU-only expert: never a GPU request
    assert extraction_resources(cfg, "image_texture") == {"threads": 1, "mem_mb": 900, "runtime": 60, "gpu": 0}
    assert expert_shards(cfg, "image_texture") == 1 and expert_shards(cfg, "biomedclip") == 4
    assert expert_shards(cfg, "moirai") == 1  # its own environment: never sharded
    cfg["experts"]["settings"] = {"biomedclip": {"device": "cpu"}}
    assert extraction_resources(cfg, "biomedclip")["gpu"] == 0  # set to run on the CPU: no GPU asked
    cfg["resources"] = {"extract": {"runtime": 240, "threads": 4}}
    assert extraction_resources(cfg, "biomedclip") == {"threads": 4, "mem_mb": 3000, "runtime": 240, "gpu": 0}


@pytest.mark.parametrize(("extraction", "message"), [
    ({"experts": {"image_textur": {"shards": 2}}}, "did you mean 'image_texture'"),
    ({"experts": {"moirai": {"shards": 4}}}, "is not sharded"),
    ({"experts": {"image_texture": {"shard": 2}}}, "did you mean 'shards'"),
    ({"shards": 0}, "extraction.shards"),
])
def test_bad_extraction_settings_name_the_key(extraction, message):
    with pytest.raises(ConfigError, match=message):
        _config(**extraction)


def test_resource_overrides_are_schema_checked():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["resources"] = {"fit": {"mem": 100}}
    with pytest.raises(ConfigError, match=r"resources\.fit\.mem.*did you mean 'mem_mb'"):
        validate_config(cfg)


# ----------------------------------------------------------------------------- device selection (on CPU)
def test_batch_size_follows_the_device_the_job_gets(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_batch_size("biomedclip", {}) == 16
    assert default_batch_size("biomedclip", {"batch_size": 7}) == 7
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU node
    assert default_batch_size("biomedclip", {}) == 256
    assert default_batch_size("biomedclip", {"device": "cpu"}) == 16
    assert default_batch_size("qwen2_7b", {"device": "cuda:1"}) == 8
    assert default_batch_size("image_texture", {}) == 32  # CPU-only expert: its CPU size


def test_trainer_picks_cuda_and_bf16_only_when_present(monkeypatch):
    import torch

    from medmix.training.trainer import TrainConfig, resolve_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_runtime(TrainConfig()) == (torch.device("cpu"), None)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_runtime(TrainConfig(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_runtime(TrainConfig()) == (torch.device("cuda"), torch.bfloat16)
    assert resolve_runtime(TrainConfig(precision="fp32")) == (torch.device("cuda"), None)


def test_hub_experts_copy_through_pinned_memory_only_on_cuda(monkeypatch):
    import torch

    from extractors.registry import create_extractor

    ex = create_extractor("dinov2_base", {"device": "cpu"})
    ex.device = "cpu"
    t = torch.ones(2, 3)
    assert ex.to_device(t).device.type == "cpu"
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("to", a, k)) or self)
    ex.device = "cuda"
    ex.to_device(t)
    assert calls == ["pin", ("to", ("cuda",), {"non_blocking": True})]


# ----------------------------------------------------------------------------- the workflow
def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})})
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def tiny_config(shards: int = 1) -> dict:
    """One small demo cohort, its frontal CXR, one cheap expert pair, one method, one seed."""
    cfg = default_config()
    cfg["seeds"] = [0]
    cfg["demo"]["cohorts"] = {"demo_openi": {"kind": "cxr", "n_patients": 40, "seed": 1}}
    cfg["datasets"] = {"demo_openi": {**cfg["datasets"]["demo_openi"],
                                      "modalities": {"frontal": {"kind": "image", "column": "frontal"}}}}
    cfg["datasets"]["demo_openi"].pop("modality_roles", None)  # one modality: no CP-IMoE roles
    cfg["experts"]["profiles"]["tiny"] = {"image": {"committee": [
        {"name": "image_texture", "role": "biomed"}, {"name": "image_intensity_grid", "role": "general"}]}}
    cfg["experts"]["profile"] = "tiny"
    cfg["methods"] = ["meanavg"]
    cfg["training"].update({"max_epochs": 2, "warmup_epochs": 1, "patience": 1})
    cfg["protocols"] = {"train": {"none": {"kind": "none"}}, "test": {"none": {"kind": "none"}}}
    cfg["extraction"] = {"shards": shards}
    return cfg


@pytest.mark.slow
def test_cluster_generic_run_with_shards_and_groups_equals_a_local_run(tmp_path):
    """Each job (shards, merges, the group of fit jobs, the dataset's evaluate job) is a separately submitted
    process."""
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for folder, shards in ((local, 1), (cluster, 2)):
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(tiny_config(shards)))
    _snakemake(local, "--cores", "2", "all")
    submissions = tmp_path / "submissions.jsonl"
    # --groups / --group-components take several values: a single-valued option goes before the target
    _snakemake(cluster, "--executor", "cluster-generic", "--latency-wait", "5",
               "--cluster-generic-submit-cmd", str(REPO / "tests/cluster/local_submit.sh"),
               "--groups", "fit=fusion", "--group-components", "fusion=20", "--jobs", "4", "all",
               env={"MEDMIX_SUBMISSIONS": str(submissions)})
    jobs = [json.loads(line) for line in submissions.read_text().splitlines()]
    singles = sorted(j["rule"] for j in jobs if j["type"] == "single")
    assert singles == ["demo_cohort", "evaluate_demo_openi", "extract_shard", "extract_shard", "extract_shard",
                       "extract_shard", "merge_shards", "merge_shards", "prepare_dataset", "tables"], singles
    groups = [j for j in jobs if j["type"] == "group"]
    assert len(groups) == 1 and groups[0]["groupid"] == "fusion"
    assert any(o.endswith("fit.json") for o in groups[0]["output"])

    assert not (local / "results/demo_openi/feature_shards").exists()
    assert len(list((cluster / "results/demo_openi/feature_shards").rglob("*-of-2.parquet"))) == 4
    for expert in ("image_texture", "image_intensity_grid"):
        rel = f"results/demo_openi/features/frontal/{expert}.parquet"
        a, b = read_features(local / rel), read_features(cluster / rel)
        assert a.sample_ids == b.sample_ids and np.array_equal(a.present, b.present)
        assert np.array_equal(a.embeddings, b.embeddings)
    rel = "results/demo_openi/runs/meanavg/none/predictions/demo_openi.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(local / rel), pd.read_parquet(cluster / rel))
    a, b = (pd.read_csv(f / "results/tables/metrics.csv") for f in (local, cluster))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_sharded_rerun_recomputes_only_the_changed_shard(tmp_path):
    from workflow_helpers import manifest_config, write_manifest_cohort

    write_manifest_cohort(tmp_path / "cohort", n=30)
    cfg = manifest_config(tmp_path)
    cfg["extraction"] = {"shards": 3, "experts": {"text_keywords": {"shards": 1}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    _snakemake(tmp_path, "--cores", "2", "all")
    assert "Nothing to be done" in _snakemake(tmp_path, "-n", "all").stdout
    # one image replaced in place: one shard of each image expert reruns, then the merges
    Image.fromarray(np.full((32, 32), 9, np.uint8), mode="L").save(tmp_path / "cohort/img/1.png")
    jobs = job_counts(_snakemake(tmp_path, "-n", "all").stdout)
    assert jobs.get("extract_shard") == 2 and jobs.get("merge_shards") == 2, jobs
    assert "extract" not in jobs and "prepare_dataset" not in jobs, jobs
    _snakemake(tmp_path, "--cores", "2", "all")
    # a label edit reruns no extraction at all
    manifest = tmp_path / "cohort/manifest.csv"
    table = pd.read_csv(manifest, keep_default_na=False)
    table.loc[3, "outcome"] = 1 - int(table.loc[3, "outcome"])
    table.to_csv(manifest, index=False)
    jobs = job_counts(_snakemake(tmp_path, "-n", "all").stdout)
    assert not {"extract", "extract_shard", "merge_shards"} & set(jobs), jobs
    # changing the shard count replans that expert's parts (new names), nothing else of stage 1
    cfg2 = copy.deepcopy(cfg)
    cfg2["extraction"]["experts"]["image_texture"] = {"shards": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg2))
    jobs = job_counts(_snakemake(tmp_path, "-n", "all").stdout)
    assert jobs.get("extract_shard") == 2 and jobs.get("merge_shards") == 1, jobs


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["slurm", "kubernetes"])
def test_cluster_profiles_plan_the_workflow(tmp_path, profile):
    pytest.importorskip(f"snakemake_executor_plugin_{profile}", reason="pip install -e '.[cluster]'")
    cfg = tiny_config(shards=2)
    cfg["experts"]["profiles"]["tiny"]["image"]["committee"][1] = {"name": "biomedclip", "role": "general"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    extra = ["--default-storage-prefix", str(tmp_path / "store")] if profile == "kubernetes" else []
    out = _snakemake(tmp_path, "--workflow-profile", str(REPO / "workflow/profiles" / profile), "-n", "all", *extra)
    text = out.stdout + out.stderr
    assert f"Using workflow specific profile {REPO / 'workflow/profiles' / profile}" in text
    jobs = job_counts(out.stdout)
    assert jobs["extract_shard"] == 4 and jobs["merge_shards"] == 2 and jobs["fit"] == 1, jobs
    # Only the GPU-capable expert's shards ask for a GPU.
    # one block per planned job (profiles may print jobs without a blank line between them)
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule \w+:)", text) if b.startswith("rule extract_shard:")]
    assert len(blocks) == 4, blocks
    gpu = {("biomedclip" in b, "gpu=1" in b) for b in blocks}
    assert gpu == {(True, True), (False, False)}, gpu


def test_slurm_plugin_turns_the_gpu_resource_into_a_gpu_request():
    """The mapping the slurm profile relies on: `gpu: 1` -> `--gpus=1`, `gpu: 0` -> nothing."""
    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils", reason="pip install -e '.[cluster]'")

    class Resources(dict):
        __getattr__ = dict.get

    class Job:
        def __init__(self, **resources):
            self.resources = Resources(resources)

    assert utils.set_gres_string(Job(gpu=1)).strip() == "--gpus=1"
    assert utils.set_gres_string(Job(gpu=0)).strip() == ""


@pytest.mark.parametrize(("extra", "scheduler"), [
    ([], "greedy"),
    (["--scheduler", "ilp"], "ilp"),  # the command line wins
    (["--workflow-profile", "none"], "ilp"),  # Snakemake's own default, without the profile
])
def test_default_workflow_profile_picks_the_greedy_scheduler(tmp_path, monkeypatch, extra, scheduler):
    """profiles/default applies to any run of this Snakefile (from any folder)."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(tmp_path)
    _, args = parse_args(["--snakefile", str(REPO / "Snakefile"), "--cores", "2", *extra, "all"])
    assert args.scheduler == scheduler


@pytest.mark.parametrize("profile", ["slurm", "kubernetes"])
def test_cluster_profiles_pick_the_greedy_scheduler_too(tmp_path, monkeypatch, profile):
    pytest.importorskip(f"snakemake_executor_plugin_{profile}", reason="pip install -e '.[cluster]'")
    from snakemake.cli import parse_args

    monkeypatch.chdir(tmp_path)
    _, args = parse_args(["--snakefile", str(REPO / "Snakefile"), "--workflow-profile",
                          str(REPO / "workflow/profiles" / profile), "all"])
    assert args.scheduler == "greedy"
