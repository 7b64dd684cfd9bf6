"""``medmix init`` (a config inferred from a manifest), ``medmix info`` over overlays, and the overlay
rule (medmix.plan.overlay): a config that declares its own datasets inherits none of the demo's."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medmix.cli import main
from medmix.datasets.manifest import KINDS
from medmix.plan.config import REPO_ROOT, validate_config
from medmix.plan.init_config import InitError, build_overlay, infer_dataset, modality_name
from medmix.plan.overlay import effective_config, load_yaml, merge

BASE = load_yaml(REPO_ROOT / "config.yaml")
DEMO_DATASETS = {"demo_openi", "demo_mimic", "demo_mimic_ext"}


def write_cohort(folder, n=12, seed=0, split=False):
    """A tiny manifest: an image, a note file, a series file, free text, a numeric and a categorical
    column, a patient column, two binary labels (and a split column when asked)."""
    rng = np.random.default_rng(seed)
    for sub in ("img", "notes", "ts"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        y1, y2 = i % 2, int(i % 3 == 0)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(folder / "img" / f"{i}.png")
        (folder / "notes" / f"{i}.txt").write_text("effusion present" if y1 else "lungs clear")
        pd.DataFrame(rng.normal(y2, 1, (6, 3)), columns=["hr", "sbp", "spo2"]).to_csv(folder / "ts" / f"{i}.csv",
                                                                                    index=False)
        row = {
            "sample_id": f"s{i}", "patient_id": f"p{i // 2}",
            "cxr_path": f"img/{i}.png" if i % 5 else "img/absent.png",
            "report_file": f"notes/{i}.txt", "ehr": f"ts/{i}.csv",
            "history": ("shortness of breath and a cough for three days" if y1 else
                        "routine follow-up visit, no new complaints") if i % 4 else "",
            "age": 40 + i, "sex": "FM"[i % 2], "site_id": 100 + i, "outcome": y1, "readmit": y2,
        }
        if split:
            row["split"] = ("train", "train", "val", "test")[(i // 2) % 4]  # by patient
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_init_infers_each_column_kind(tmp_path):
    manifest = write_cohort(tmp_path / "mycohort")
    inf = infer_dataset(manifest, ["outcome", "readmit"], manifest_ref="mycohort/manifest.csv")
    ds = inf.dataset
    assert inf.name == "mycohort" and inf.task == "multilabel" and inf.rows == 12  # generic stem: the folder's name
    assert ds["adapter"] == "manifest" and ds["manifest"] == "mycohort/manifest.csv"
    assert ds["id_column"] == "sample_id" and ds["patient_column"] == "patient_id"
    assert ds["split_ratios"] == [0.65, 0.15, 0.2] and ds["split_seed"] == 0 and "split_column" not in ds
    assert ds["labels"] == ["outcome", "readmit"]
    assert ds["modalities"] == {
        "cxr": {"kind": "image", "column": "cxr_path"},
        "report": {"kind": "text", "column": "report_file", "file": True},
        "ehr": {"kind": "timeseries", "column": "ehr"},
        "history": {"kind": "text", "column": "history"},
        "tabular": {"kind": "tabular", "columns": ["age", "sex"], "categorical": ["sex"]},
    }
    uses = {c.name: c.use for c in inf.columns}
    assert uses["site_id"] == "ignored" and uses["outcome"] == "label"
    image = next(c for c in inf.columns if c.name == "cxr_path")
    assert "9 of 12 files exist" in image.detail  # rows 0, 5, 10 name an absent file: a missing modality


def test_init_volumes_folders_and_parquet_series(tmp_path):
    rows = []
    for i in range(6):
        (tmp_path / "dicom" / f"case{i}").mkdir(parents=True)  # a DICOM series folder per case
        rows.append({"case_id": f"c{i}", "ct_series": f"dicom/case{i}", "pet": f"pet/{i}.NII.GZ",
                     "labs": f"labs/{i}.parquet", "y": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "cases.csv", index=False)
    inf = infer_dataset(tmp_path / "cases.csv", ["y"])
    assert inf.name == "cases" and inf.dataset["id_column"] == "case_id" and inf.dataset["patient_column"] == "case_id"
    assert inf.dataset["modalities"] == {"ct_series": {"kind": "volume", "column": "ct_series"},
                                         "pet": {"kind": "volume", "column": "pet"},
                                         "labs": {"kind": "timeseries", "column": "labs"}}
    assert any("no patient column" in w for w in inf.warnings)
    assert any("none of its 6 files exists" in w for w in inf.warnings)  # pet/ and labs/ are absent


def test_init_split_column_task_and_errors(tmp_path):
    manifest = write_cohort(tmp_path / "c", split=True)
    inf = infer_dataset(manifest, ["outcome"], name="c1")
    assert inf.task == "binary" and inf.dataset["split_column"] == "split" and "split_ratios" not in inf.dataset
    table = pd.read_csv(manifest)
    table["diagnosis"] = ["NEV", "MEL", "BCC"] * 4
    table.to_csv(manifest, index=False)
    inf = infer_dataset(manifest, ["diagnosis"])
    assert inf.task == "multiclass" and inf.dataset["classes"] == ["BCC", "MEL", "NEV"]
    with pytest.raises(InitError, match="not in the manifest"):
        infer_dataset(manifest, ["outcome", "nope"])
    with pytest.raises(InitError, match=r"labels \['diagnosis'\] hold values other than 0/1"):
        infer_dataset(manifest, ["outcome", "diagnosis"])
    assert (modality_name("note text", set()) == "note" and modality_name("a-b", set()) == "a_b"
            and modality_name("ct_path", {"ct"}) == "ct_path")


def test_init_command_writes_a_valid_config_without_demo_leftovers(tmp_path, monkeypatch, capsys):
    write_cohort(tmp_path / "data", n=24)
    monkeypatch.chdir(tmp_path)  # no config.yaml here: the repository's is the base
    rc = main(["init", "--manifest", "data/manifest.csv", "--labels", "outcome", "readmit", "--out", "my.yaml",
               "--name", "mine"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    # No Snakefile here: the command names the workflow's.
    command = f"snakemake -s {REPO_ROOT / 'Snakefile'} --cores 8 all --configfile my.yaml"
    assert "wrote my.yaml: dataset mine (24 samples" in out and f"next: {command}\n" in out
    text = (tmp_path / "my.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0].startswith("# medmix config for the cohort `mine`") and f"#   {command}" in header
    (tmp_path / "Snakefile").touch()  # in the medmix folder: plain snakemake
    assert main(["init", "--manifest", "data/manifest.csv", "--labels", "outcome", "--out", "here.yaml"]) == 0
    assert "next: snakemake --cores 8 all --configfile here.yaml\n" in capsys.readouterr().out
    overlay = yaml.safe_load(text)
    assert set(overlay) == {"datasets", "methods", "protocols", "sweep", "missing_grid"}
    mods = set(overlay["datasets"]["mine"]["modalities"])
    assert mods == {"cxr", "report", "ehr", "history", "tabular"}
    # The default comparison that runs here: a teacher reference per note modality, none for `note`.
    methods = overlay["methods"]
    assert "large_ref_report" in methods and "large_ref_history" in methods and "large_ref_note" not in methods
    assert {m for m in BASE["methods"] if not m.startswith("large_ref_")} <= set(methods)
    assert set(overlay["protocols"]["test"]) == {"none", "random_drop_30", "random_drop_50",
                                                 *(f"drop_one_{m}_50" for m in mods)}
    assert overlay["sweep"] == {"methods": ["gbdt", "medmix"], "datasets": ["mine"], "n_seeds": 1}
    assert overlay["missing_grid"] == {"methods": []}

    cfg = validate_config(effective_config(BASE, [overlay]))
    assert set(cfg["datasets"]) == {"mine"} and cfg["demo"] == {"cohorts": {}}
    named = {p.get("modality") for stage in cfg["protocols"].values() for p in stage.values()} - {None}
    assert named == mods
    assert "demo" not in yaml.safe_dump(overlay)  # no demo leftovers in the file

    capsys.readouterr()
    assert main(["info", "--base", str(REPO_ROOT / "config.yaml"), "--config", "my.yaml"]) == 0
    info = capsys.readouterr().out
    assert info.startswith(f"config: {REPO_ROOT / 'config.yaml'} + my.yaml (valid)")
    assert "dataset mine:" in info and "demo_" not in info
    assert main(["init", "--manifest", "data/manifest.csv", "--labels", "outcome", "--out", "my.yaml"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err


def test_overlay_without_datasets_is_snakemakes_merge():
    from snakemake.utils import update_config

    for name in ("quick", "compare", "paper_protocols"):
        overlay = load_yaml(REPO_ROOT / "config" / f"{name}.yaml")
        expected = copy.deepcopy(BASE)
        update_config(expected, copy.deepcopy(overlay))
        assert effective_config(BASE, [overlay]) == expected, name
    assert effective_config(BASE, []) == BASE


def test_overlay_with_own_datasets_inherits_nothing_of_the_demo():
    """A hand-written overlay with only a tabular dataset: no demo dataset, cohort, sweep, grid or
    protocol naming a demo modality; the variant without general experts (tabular_raw is the
    only, general, expert) and large_ref_note leave the inherited runs; it validates."""
    overlay = {"datasets": {"tab": {
        "adapter": "manifest", "manifest": "t.csv", "task": "binary", "labels": ["y"],
        "modalities": {"vitals": {"kind": "tabular", "columns": ["age"]}}}}}
    cfg = effective_config(BASE, [overlay])
    assert set(cfg["datasets"]) == {"tab"} and "demo" not in cfg
    assert cfg["sweep"]["methods"] == [] and "datasets" not in cfg["sweep"]
    assert cfg["missing_grid"]["methods"] == []
    assert set(cfg["protocols"]["test"]) == {"none", "random_drop_30", "random_drop_50"}
    assert "medmix_no_general" not in cfg["variants"] and "medmix_no_general" not in cfg["methods"]
    assert "large_ref_note" not in cfg["methods"] and "medmix_no_rag" in cfg["methods"]
    validate_config(cfg)
    assert BASE["sweep"]["datasets"] == ["demo_openi"]  # the base itself is not modified

    # What the overlay says itself stays, even where it names a missing modality (then the check reports it).
    own = merge(overlay, {"methods": ["meanavg", "large_ref_note"], "sweep": {"methods": ["gbdt"]},
                          "protocols": {"test": {"drop_one_note_50": {"kind": "drop_one", "modality": "note",
                                                                      "p": 0.5}}}})
    cfg = effective_config(BASE, [own])
    assert cfg["methods"] == ["meanavg", "large_ref_note"] and "drop_one_note_50" in cfg["protocols"]["test"]
    assert cfg["sweep"]["methods"] == ["gbdt"] and "datasets" not in cfg["sweep"]  # every development dataset

    # Adjusting a demo dataset declares no dataset of its own: Snakemake's merge. Next to a new
    # dataset, a demo dataset named in the overlay stays (the base's entry, adjusted) with its cohort.
    tweak = {"datasets": {"demo_openi": {"split_seed": 3}}}
    assert effective_config(BASE, [tweak]) == merge(BASE, tweak)
    cfg = effective_config(BASE, [merge(overlay, tweak)])
    assert set(cfg["datasets"]) == {"tab", "demo_openi"} and cfg["datasets"]["demo_openi"]["split_seed"] == 3
    assert cfg["datasets"]["demo_openi"]["adapter"] == "demo" and set(cfg["demo"]["cohorts"]) == {"demo_openi"}
    assert cfg["sweep"]["datasets"] == ["demo_openi"] and "drop_one_frontal_50" in cfg["protocols"]["test"]
    validate_config(cfg)

    # include_demo: true is Snakemake's plain merge: the demo's datasets run next to the overlay's.
    both = effective_config(BASE, [{**overlay, "include_demo": True}])
    assert set(both["datasets"]) == DEMO_DATASETS | {"tab"} and both["demo"] == BASE["demo"]


def test_every_kind_has_a_committee_in_every_profile():
    profiles = BASE["experts"]["profiles"]
    assert set(KINDS) == {"image", "text", "timeseries", "volume", "slide", "tabular"}
    for name, profile in profiles.items():
        assert set(profile) == set(KINDS), name
        for kind, entry in profile.items():
            assert entry["committee"], (name, kind)


def test_init_overlay_keeps_only_variants_that_fit():
    """A tabular-only cohort: the variant without general experts cannot run and is not listed."""
    inf = type("Inf", (), {})()
    inf.name = "t"
    inf.dataset = {"adapter": "manifest", "manifest": "t.csv", "task": "binary", "labels": ["y"],
                   "modalities": {"tabular": {"kind": "tabular", "columns": ["age"]}}}
    overlay = build_overlay(inf, BASE)
    assert "medmix_no_general" not in overlay["methods"] and "medmix_no_biomed" in overlay["methods"]
    assert not any(m.startswith("large_ref_") for m in overlay["methods"])
    assert overlay["sweep"] == {"methods": []}  # one modality: nothing to sweep
    inf.name = "demo_openi"
    with pytest.raises(InitError, match="a dataset of the base config already"):
        build_overlay(inf, BASE)


def test_a_reader_that_left_gets_no_traceback():
    """`medmix experts | head -1`: the pipe is closed before the command writes (deterministic)."""
    proc = subprocess.Popen([sys.executable, "-m", "medmix.cli", "experts"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Error" not in err, err
