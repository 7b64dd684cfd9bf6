"""``medmix cache ls`` / ``show``: what each feature file records (expert, model, revision, dim,
presence, failed samples with their reasons, fingerprints, checksum) and whether it is stale for
the current config, through the CLI entry on a feature cache the extraction job writes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from extractors.job import extract_job
from medmix.cli import main
from medmix.datasets import build_cohort
from medmix.plan.cache_report import expert_code_files
from medmix.plan.code_closure import REPO
from medmix.plan.config import REPO_ROOT, expert_identity, feature_path
from medmix.plan.overlay import effective_config, load_yaml
from medmix.store.inputs import source_fingerprint, write_input_view

BASE = str(REPO_ROOT / "config.yaml")
MINILM_REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
OVERLAY = {
    "datasets": {"tiny": {
        "adapter": "manifest", "manifest": "data/manifest.csv", "id_column": "sample_id",
        "patient_column": "sample_id", "task": "binary", "labels": ["outcome"],
        "modalities": {
            "cxr": {"kind": "image", "column": "cxr_path", "teacher": None,
                    "committee": [{"name": "image_intensity_grid", "role": "biomed"}]},
            "note": {"kind": "text", "column": "note", "teacher": None,
                     "committee": [{"name": "minilm_l6", "role": "general"}]},
        },
    }},
    "methods": ["meanavg"], "protocols": {"train": {"none": {"kind": "none"}}, "test": {"none": {"kind": "none"}}},
    "sweep": {"methods": []}, "missing_grid": {"methods": []},
}


def _image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A 12-sample manifest cohort (image s3 is not an image) and its two feature files, written as
    the workflow writes them: the input view, then one extraction job per (modality, expert)."""
    root = tmp_path_factory.mktemp("cache_cli")
    (root / "data" / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        if i == 3:
            (root / "data" / "img" / "3.png").write_bytes(b"not a png")
        else:
            _image(root / "data" / "img" / f"{i}.png", i)
        rows.append({"sample_id": f"s{i}", "cxr_path": f"img/{i}.png", "outcome": i % 2,
                     "note": "small left pleural effusion" if i % 2 else "lungs are clear"})
    pd.DataFrame(rows).to_csv(root / "data" / "manifest.csv", index=False)
    (root / "my.yaml").write_text(yaml.safe_dump(OVERLAY))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = effective_config(load_yaml(BASE), [yaml.safe_load((root / "my.yaml").read_text())])
        write_input_view("results/tiny/inputs.parquet", build_cohort("tiny", cfg["datasets"]["tiny"], ".").input_view())
        for modality, expert in (("cxr", "image_intensity_grid"), ("note", "minilm_l6")):
            extract_job("results/tiny/inputs.parquet", modality, expert, feature_path("tiny", modality, expert),
                        identity=expert_identity(cfg, expert), runtime={"device": "cpu"}, max_failed_fraction=0.5,
                        code_fingerprint=source_fingerprint(expert_code_files(expert), REPO))
    return root


def _run(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["cache", *argv, "--base", BASE])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _ls(capsys, *configs) -> dict[str, list[str]]:
    rc, out = _run(capsys, "ls", *[a for c in configs for a in ("--config", c)])
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["dataset", "modality", "expert", "role", "model", "revision", "dim", "rows",
                                "present", "failed", "status"]
    return {"/".join(ln.split()[:3]): ln.split() for ln in lines[1:] if ln.startswith("tiny ")}


def test_ls_lists_every_feature_file_with_its_facts(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    rows = _ls(capsys, "my.yaml")
    assert rows["tiny/cxr/image_intensity_grid"][3:] == ["general", "-", "-", "160", "12", "91.7%", "1", "fresh"]
    assert rows["tiny/note/minilm_l6"][3:] == ["general", "sentence-transformers/all-MiniLM-L6-v2",
                                               MINILM_REVISION[:12], "384", "12", "100.0%", "0", "fresh"]
    rc, out = _run(capsys, "ls", "--config", "my.yaml")
    assert out.rstrip().endswith("2 feature files under results, compared with " + BASE + " + my.yaml: 2 fresh")

    # A truncated copy: listed as unreadable, moved aside by the store (the next run rebuilds it).
    broken = project / "results/tiny/features/cxr/broken.parquet"
    broken.write_bytes((project / "results/tiny/features/cxr/image_intensity_grid.parquet").read_bytes()[:-100])
    rows = _ls(capsys, "my.yaml")
    assert rows["tiny/cxr/broken"][-1] == "unreadable" and rows["tiny/cxr/image_intensity_grid"][-1] == "fresh"
    assert not broken.exists() and broken.with_name("broken.parquet.corrupt").is_file()
    broken.with_name("broken.parquet.corrupt").unlink()


def test_show_prints_the_metadata_failed_reasons_and_fingerprints(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    rc, out = _run(capsys, "show", "tiny/image_intensity_grid", "--config", "my.yaml")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == "file: results/tiny/features/cxr/image_intensity_grid.parquet"
    assert "dataset: tiny   modality: cxr (image)   shards: 1" in lines
    assert "dim: 160   rows: 12   present: 11 (91.7%)" in lines
    assert "missing in the cohort: 0   failed: 1 (extraction.max_failed_fraction 0.5)" in lines
    reason = lines[lines.index("failed samples (sample: reason):") + 1]
    assert reason.startswith(f"  s3: unreadable image {project / 'data' / 'img' / '3.png'}: cannot identify image file")
    for label in ("input", "code"):
        assert next(ln for ln in lines if ln.startswith(f"  {label}: ")).endswith(" (same now)")
    assert "  weights: (no local_dir) (same now)" in lines
    assert "checksum: values and metadata verified" in lines and lines[-1] == "status: fresh"

    rc, out = _run(capsys, "show", "results/tiny/features/note/minilm_l6.parquet", "--config", "my.yaml")
    assert f"model: sentence-transformers/all-MiniLM-L6-v2   revision: {MINILM_REVISION}" in out.splitlines()
    assert '"max_seq_length":256' in out and "status: fresh" in out

    rc, out = _run(capsys, "show", "tiny/nonexistent", "--config", "my.yaml")
    assert rc == 2 and "no feature file 'tiny/nonexistent' under results (there: tiny/cxr/image_intensity_grid, " \
                       "tiny/note/minilm_l6)" in out


def test_a_config_or_input_change_makes_a_file_stale(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    (project / "size.yaml").write_text(yaml.safe_dump(
        {"experts": {"settings": {"image_intensity_grid": {"preprocessing": {"size": 32}}}}}))
    rows = _ls(capsys, "my.yaml", "size.yaml")
    assert rows["tiny/cxr/image_intensity_grid"][-1] == "stale" and rows["tiny/note/minilm_l6"][-1] == "fresh"
    rc, out = _run(capsys, "show", "tiny/cxr/image_intensity_grid", "--config", "my.yaml", "--config", "size.yaml")
    assert "status: stale" in out and "  differs: preprocessing: size recorded 64, now 32" in out.splitlines()

    # Another committee: the image file is no longer asked for.
    other = yaml.safe_load((project / "my.yaml").read_text())
    other["datasets"]["tiny"]["modalities"]["cxr"]["committee"] = [{"name": "image_texture", "role": "biomed"}]
    (project / "other.yaml").write_text(yaml.safe_dump(other))
    assert _ls(capsys, "other.yaml")["tiny/cxr/image_intensity_grid"][-1] == "unused"

    # A replaced input file (other pixels, other size): the image expert's inputs differ, not the note's.
    image = project / "data" / "img" / "5.png"
    before, stat = image.read_bytes(), image.stat()
    Image.fromarray(np.zeros((20, 20), np.uint8), mode="L").save(image)
    try:
        rows = _ls(capsys, "my.yaml")
        assert rows["tiny/cxr/image_intensity_grid"][-1] == "stale" and rows["tiny/note/minilm_l6"][-1] == "fresh"
        rc, out = _run(capsys, "show", "tiny/cxr/image_intensity_grid", "--config", "my.yaml")
        assert "  differs: inputs (sample ids, values, input files' names, sizes and mtimes, input schema): recorded " \
               in out and "(inputs now: the dataset's source)" in out
        assert next(ln for ln in out.splitlines() if ln.startswith("  input: ")).split("(")[1].startswith("now ")
    finally:
        image.write_bytes(before)
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
