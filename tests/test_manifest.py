"""The manifest adapter, the MIMIC / MMIST adapters built on it, and the dataset summary."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmix.cohort import CohortError, read_cohort, write_cohort
from medmix.datasets import build_cohort, known_adapters
from medmix.datasets.declared import declared_labels, declared_modalities
from medmix.datasets.manifest import load_manifest_dataset, patient_split
from medmix.datasets.mimic_variables import EHR_VARIABLE_NAMES, EHR_VARIABLES, variables_markdown
from medmix.datasets.summary import summarize, write_summary

ALL_KINDS_CFG = {
    "adapter": "manifest",
    "manifest": "data/manifest.csv",
    "id_column": "sid",
    "patient_column": "pid",
    "split_column": "split",
    "task": "multilabel",
    "labels": ["effusion", "nodule"],
    "modalities": {
        "frontal": {"kind": "image", "column": "frontal_path"},
        "note": {"kind": "text", "column": "note_text"},
        "report": {"kind": "text", "column": "report_file", "file": True},
        "ehr": {"kind": "timeseries", "column": "ehr_path"},
        "ct": {"kind": "volume", "column": "ct_path"},
        "slide": {"kind": "slide", "column": "slide_path"},
        "vitals": {"kind": "tabular", "columns": ["age", "bmi"]},
    },
}


def _write_png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 120, dtype=np.uint8)).save(path)


def _all_kinds_fixture(tmp_path: Path) -> Path:
    """A manifest with every modality kind, empty cells and absent files; returns the workflow folder."""
    data = tmp_path / "data"
    _write_png(data / "img" / "a.png")
    _write_png(data / "img" / "c.png")
    _write_png(data / "slides" / "a_thumb.png")
    (data / "notes").mkdir(parents=True)
    (data / "notes" / "a.txt").write_text("Report of a: small effusion.\n")
    (data / "ehr").mkdir()
    pd.DataFrame({"hour": [0, 1], "hr": [80, 82], "sbp": [120, None]}).to_csv(data / "ehr" / "a.csv", index=False)
    (data / "ct").mkdir()
    np.save(data / "ct" / "b.npy", np.zeros((4, 8, 8), dtype=np.float32))
    (data / "ct" / "dicom_a").mkdir()  # a DICOM series is a folder
    rows = [
        # sid, pid, split, effusion, nodule, frontal, note, report file, ehr, ct, slide, age, bmi
        ["a", "p1", "train", "1", "0", "img/a.png", "effusion left", "notes/a.txt", "ehr/a.csv", "ct/dicom_a",
         "slides/a_thumb.png", "61", "22.5"],
        ["b", "p1", "train", "0", "", "", "", "", "ehr/missing.csv", "ct/b.npy", "", "", ""],
        ["c", "p2", "val", "0", "1", "img/c.png", "nodule", "notes/gone.txt", "", "", "slides/gone.png", "70", ""],
        ["d", "p3", "test", "1", "1", "img/absent.png", "both", "", "", "ct/none.nii.gz", "", "55", "30"],
    ]
    cols = ["sid", "pid", "split", "effusion", "nodule", "frontal_path", "note_text", "report_file", "ehr_path",
            "ct_path", "slide_path", "age", "bmi"]
    pd.DataFrame(rows, columns=cols).to_csv(data / "manifest.csv", index=False)
    return tmp_path


def _cfg(**changes):
    cfg = json.loads(json.dumps(ALL_KINDS_CFG))
    cfg.update(changes)
    return cfg


def _rewrite(base: Path, edit) -> None:
    path = base / "data" / "manifest.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)


# --------------------------------------------------------------------------- all kinds, happy path
def test_every_modality_kind_with_empty_cells_and_absent_files(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    cohort = build_cohort("fx", _cfg(), base)
    data = (base / "data").resolve()
    assert cohort.modalities == {"frontal": "image", "note": "text", "report": "text", "ehr": "timeseries",
                                 "ct": "volume", "slide": "slide", "vitals": "tabular"}
    assert cohort.sample_ids == ["a", "b", "c", "d"]
    assert cohort.frame["split"].tolist() == ["train", "train", "val", "test"]
    assert cohort.inputs("frontal") == [str(data / "img/a.png"), None, str(data / "img/c.png"), None]
    assert cohort.inputs("note") == ["effusion left", None, "nodule", "both"]
    assert cohort.inputs("report") == ["Report of a: small effusion.", None, None, None]
    assert cohort.inputs("ehr") == [str(data / "ehr/a.csv"), None, None, None]
    assert cohort.inputs("ct") == [str(data / "ct/dicom_a"), str(data / "ct/b.npy"), None, None]
    assert cohort.inputs("slide") == [str(data / "slides/a_thumb.png"), None, None, None]
    vitals = cohort.inputs("vitals")
    assert json.loads(vitals[0]) == [61.0, 22.5]
    assert vitals[1] is None  # all tabular values empty -> missing
    assert json.loads(vitals[2]) == [70.0, None]  # partially observed -> null inside the list
    labels = cohort.label_matrix()
    assert labels[0].tolist() == [1.0, 0.0]
    assert labels[1, 0] == 0.0 and math.isnan(labels[1, 1])  # empty label cell = unknown
    absent = cohort.extra["absent_files"]
    assert set(absent) == {"frontal", "report", "ehr", "ct", "slide"}
    assert absent["frontal"] == {"d": str(data / "img/absent.png")}
    assert absent["ehr"] == {"b": str(data / "ehr/missing.csv")}
    assert absent["ct"] == {"d": str(data / "ct/none.nii.gz")}
    assert absent["report"] == {"c": str(data / "notes/gone.txt")}


def test_cohort_roundtrip_keeps_absent_files(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    cohort = build_cohort("fx", _cfg(), base)
    write_cohort(cohort, tmp_path / "out" / "cohort.parquet")
    back = read_cohort(tmp_path / "out" / "cohort.parquet")
    assert back.extra["absent_files"] == cohort.extra["absent_files"]
    assert back.inputs("vitals") == cohort.inputs("vitals")
    assert back.labels == ["effusion", "nodule"]


def test_parquet_manifest_and_data_root(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    frame = pd.read_csv(base / "data" / "manifest.csv", dtype=str, keep_default_na=False)
    frame["age"] = pd.to_numeric(frame["age"]).astype("float64")
    frame.loc[frame["bmi"] == "", "bmi"] = None
    (base / "tables").mkdir()
    frame.to_parquet(base / "tables" / "manifest.parquet")
    cfg = _cfg(manifest="tables/manifest.parquet", data_root="data")
    cohort = load_manifest_dataset("fx", cfg, base)
    assert json.loads(cohort.inputs("vitals")[0]) == [61.0, 22.5]
    assert cohort.inputs("frontal")[0] == str((base / "data" / "img" / "a.png").resolve())


# --------------------------------------------------------------------------- errors
def test_missing_configured_columns_are_named(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _rewrite(base, lambda f: [f.pop(c) for c in ("slide_path", "bmi")])
    with pytest.raises(CohortError, match=r"'bmi' \(modalities.vitals.columns\).*'slide_path'|'slide_path'.*'bmi'"):
        build_cohort("fx", _cfg(), base)


def test_duplicate_ids_name_the_rows(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _rewrite(base, lambda f: f.__setitem__("sid", ["a", "b", "a", "d"]))
    with pytest.raises(CohortError, match=r"duplicate sample ids.*row 1 \(id 'a'\), row 3 \(id 'a'\)"):
        build_cohort("fx", _cfg(), base)


def test_label_outside_domain_names_the_rows(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _rewrite(base, lambda f: f.__setitem__("nodule", ["0", "2", "1", "yes"]))
    with pytest.raises(CohortError,
                       match=r"label 'nodule' outside \{0, 1\}.*row 2 \(id 'b'\): '2'.*row 4 \(id 'd'\): 'yes'"):
        build_cohort("fx", _cfg(), base)
    cohort = build_cohort("fx", _cfg(label_map={"yes": 1, "2": 1}), base)  # explicit spellings are accepted
    assert cohort.label_matrix()[:, 1].tolist() == [0.0, 1.0, 1.0, 1.0]


def test_patient_in_two_splits_is_refused(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _rewrite(base, lambda f: f.__setitem__("split", ["train", "test", "val", "test"]))
    with pytest.raises(CohortError,
                       match=r"more than one split.*row 1 \(id 'a'\): patient 'p1' in train.*row 2 \(id 'b'\): "
                             r"patient 'p1' in test"):
        build_cohort("fx", _cfg(), base)


def test_unknown_split_values_are_refused(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _rewrite(base, lambda f: f.__setitem__("split", ["train", "train", "holdout", ""]))
    with pytest.raises(CohortError, match=r"unknown split value.*row 3 \(id 'c'\): 'holdout'.*row 4 \(id 'd'\): ''"):
        build_cohort("fx", _cfg(), base)


def test_split_aliases_are_accepted(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _rewrite(base, lambda f: f.__setitem__("split", ["Training", "train", "Validation", "TEST"]))
    assert build_cohort("fx", _cfg(), base).frame["split"].tolist() == ["train", "train", "val", "test"]


@pytest.mark.parametrize("cell", ["../outside.png", "img/../../outside.png"])
def test_relative_path_escaping_the_manifest_folder(tmp_path, cell):
    base = _all_kinds_fixture(tmp_path)
    _write_png(tmp_path / "outside.png")
    _rewrite(base, lambda f: f.__setitem__("frontal_path", ["img/a.png", cell, "", ""]))
    with pytest.raises(CohortError, match=r"modality 'frontal', row 2 \(id 'b'\): path .* outside the data folder"):
        build_cohort("fx", _cfg(), base)


def test_absolute_path_outside_is_refused_inside_is_accepted(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _write_png(tmp_path / "elsewhere" / "x.png")
    inside = str((base / "data" / "img" / "c.png").resolve())
    _rewrite(base, lambda f: f.__setitem__("frontal_path", [inside, "", "", ""]))
    assert build_cohort("fx", _cfg(), base).inputs("frontal")[0] == inside
    _rewrite(base, lambda f: f.__setitem__("frontal_path", [str(tmp_path / "elsewhere" / "x.png"), "", "", ""]))
    with pytest.raises(CohortError, match=r"row 1 \(id 'a'\).*outside the data folder"):
        build_cohort("fx", _cfg(), base)


def test_symlink_pointing_outside_is_refused(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _write_png(tmp_path / "secret" / "x.png")
    os.symlink(tmp_path / "secret" / "x.png", base / "data" / "img" / "link.png")
    _rewrite(base, lambda f: f.__setitem__("frontal_path", ["img/link.png", "", "", ""]))
    with pytest.raises(CohortError, match=r"'img/link.png' resolves to .*secret.*outside the data folder"):
        build_cohort("fx", _cfg(), base)


def test_non_numeric_tabular_values_are_refused(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    _rewrite(base, lambda f: f.__setitem__("bmi", ["22", "", "n/a", ""]))
    with pytest.raises(CohortError,
                       match=r"tabular modality 'vitals' has non-numeric values: row 3 \(id 'c'\): bmi='n/a'"):
        build_cohort("fx", _cfg(), base)


def test_empty_ids_unknown_kind_and_binary_arity(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    with pytest.raises(CohortError, match="kind 'video'"):
        build_cohort("fx", _cfg(modalities={"v": {"kind": "video", "column": "note_text"}}), base)
    with pytest.raises(CohortError, match="exactly one label"):
        build_cohort("fx", _cfg(task="binary"), base)
    with pytest.raises(CohortError, match="manifest .* does not exist"):
        build_cohort("fx", _cfg(manifest="data/nope.csv"), base)
    _rewrite(base, lambda f: f.__setitem__("sid", ["a", "", "c", "d"]))
    with pytest.raises(CohortError, match=r"empty 'sid' in row 2"):
        build_cohort("fx", _cfg(), base)


# --------------------------------------------------------------------------- multiclass
def _multiclass_fixture(tmp_path: Path, diagnoses: list[str]) -> Path:
    data = tmp_path / "derm"
    data.mkdir()
    n = len(diagnoses)
    pd.DataFrame({
        "case_num": [str(i) for i in range(n)],
        "diagnosis": diagnoses,
        "clinic": [f"clinic/{i}.jpg" for i in range(n)],
        "derm": [f"derm/{i}.jpg" for i in range(n)],
    }).to_csv(data / "meta.csv", index=False)
    return data / "meta.csv"


MC_CFG = {
    "adapter": "manifest",
    "id_column": "case_num",
    "patient_column": "case_num",
    "task": "multiclass",
    "labels": ["diagnosis"],
    "classes": ["NEV", "BCC", "MEL", "MISC", "SK"],
    "class_map": {"clark nevus": "NEV", "blue nevus": "NEV", "melanoma (in situ)": "MEL", "basal cell carcinoma": "BCC",
                  "seborrheic keratosis": "SK", "lentigo": "MISC"},
    "modalities": {"clinic": {"kind": "image", "column": "clinic"}, "derm": {"kind": "image", "column": "derm"}},
}


def test_multiclass_one_hot_with_class_map(tmp_path):
    manifest = _multiclass_fixture(tmp_path, ["clark nevus", "MEL", "basal cell carcinoma", "", "lentigo", "SK"])
    cohort = build_cohort("derm", {**MC_CFG, "manifest": str(manifest)}, tmp_path)
    assert cohort.labels == ["NEV", "BCC", "MEL", "MISC", "SK"]
    m = cohort.label_matrix()
    assert m[0].tolist() == [1, 0, 0, 0, 0]
    assert m[1].tolist() == [0, 0, 1, 0, 0]
    assert m[2].tolist() == [0, 1, 0, 0, 0]
    assert np.isnan(m[3]).all()  # empty class = unknown
    assert m[4].tolist() == [0, 0, 0, 1, 0]
    assert cohort.extra["absent_files"]["clinic"]["0"].endswith("clinic/0.jpg")  # images absent: counted


def test_multiclass_value_outside_classes_and_config_errors(tmp_path):
    manifest = _multiclass_fixture(tmp_path, ["clark nevus", "vascular lesion", "MEL"])
    with pytest.raises(CohortError, match=r"outside classes.*row 2 \(id '1'\): 'vascular lesion'"):
        build_cohort("derm", {**MC_CFG, "manifest": str(manifest)}, tmp_path)
    with pytest.raises(CohortError, match="needs 'classes"):
        build_cohort("derm", {**MC_CFG, "manifest": str(manifest), "classes": []}, tmp_path)
    with pytest.raises(CohortError, match="ONE label column"):
        build_cohort("derm", {**MC_CFG, "manifest": str(manifest), "labels": ["diagnosis", "case_num"]}, tmp_path)
    with pytest.raises(CohortError, match=r"class_map maps to \['OTHER'\]"):
        build_cohort("derm", {**MC_CFG, "manifest": str(manifest), "class_map": {"x": "OTHER"}}, tmp_path)


# --------------------------------------------------------------------------- patient split
def test_patient_split_deterministic_disjoint_and_proportional():
    patients = pd.Series([f"p{i // 3}" for i in range(600)])  # 200 patients, 3 samples each
    first = patient_split(patients, [0.65, 0.15, 0.20], seed=7)
    assert first == patient_split(patients, [0.65, 0.15, 0.20], seed=7)
    assert first != patient_split(patients, [0.65, 0.15, 0.20], seed=8)
    per_patient = pd.DataFrame({"p": patients, "s": first}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()
    counts = pd.Series(first).value_counts() // 3
    assert (counts["train"], counts["val"], counts["test"]) == (130, 30, 40)
    with pytest.raises(CohortError, match="split_ratios"):
        patient_split(patients, [0.5, 0.5], seed=0)


def test_manifest_without_split_column_splits_by_patient(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    cohort = build_cohort("fx", _cfg(split_column=None, split_ratios=[0.34, 0.33, 0.33], split_seed=3), base)
    split = dict(zip(cohort.sample_ids, cohort.frame["split"], strict=True))
    assert split["a"] == split["b"]  # same patient p1
    assert sorted(set(split.values())) == ["test", "train", "val"]


def test_val_from_train_carves_patients(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    n = 100
    pd.DataFrame({"sid": [str(i) for i in range(n)], "pid": [str(i // 2) for i in range(n)],
                  "split": ["test" if i >= 80 else "train" for i in range(n)], "y": ["1", "0"] * (n // 2),
                  "t": ["x"] * n}).to_csv(data / "m.csv", index=False)
    cfg = {"manifest": "d/m.csv", "id_column": "sid", "patient_column": "pid", "split_column": "split",
           "val_from_train": 0.25, "task": "binary", "labels": ["y"],
           "modalities": {"t": {"kind": "text", "column": "t"}}}
    split = build_cohort("v", cfg, tmp_path).frame["split"].value_counts()
    assert (split["train"], split["val"], split["test"]) == (60, 20, 20)


# --------------------------------------------------------------------------- summary
def test_summary_content_and_files(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    cohort = build_cohort("fx", _cfg(), base)
    summary = write_summary(cohort, tmp_path / "out" / "summary.json", tmp_path / "out" / "summary.md")
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json", "summary.md"]  # no temp files
    assert summary["splits"]["all"] == {"samples": 4, "patients": 3}
    assert summary["splits"]["train"] == {"samples": 2, "patients": 1}
    assert summary["label_prevalence"]["effusion"]["all"] == {"positive": 2, "known": 4, "prevalence": 0.5}
    assert summary["label_prevalence"]["nodule"]["train"] == {"positive": 0, "known": 1, "prevalence": 0.0}
    frontal = summary["modality_availability"]["frontal"]
    assert frontal["all"] == {"available": 2, "missing": 2, "absent_files": 1, "fraction": 0.5}
    assert frontal["test"] == {"available": 0, "missing": 1, "absent_files": 1, "fraction": 0.0}
    assert summary["availability_patterns"]["all"] == {
        "frontal+note+report+ehr+ct+slide+vitals": 1,
        "ct": 1,
        "frontal+note+vitals": 1,
        "note+vitals": 1,
    }
    assert summary["availability_patterns"]["val"] == {"frontal+note+vitals": 1}
    assert summary["absent_files"]["ehr"] == {
        "count": 1, "files": [{"sample_id": "b", "path": str((base / "data" / "ehr" / "missing.csv").resolve())}]}
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| frontal | 2/4 (50.0%) [1] | 1/2 (50.0%) | 1/1 (100.0%) | 0/1 (0.0%) [1] |" in md
    assert "| frontal+note+vitals | 1 | 0 | 1 | 0 |" in md
    assert "- **ct**: 1 referenced file(s) do not exist" in md


def test_summarize_counts_match_cohort(tmp_path):
    base = _all_kinds_fixture(tmp_path)
    cohort = build_cohort("fx", _cfg(), base)
    s = summarize(cohort)
    for mod in cohort.modalities:
        assert s["modality_availability"][mod]["all"]["available"] == sum(v is not None for v in cohort.inputs(mod))
    assert sum(s["availability_patterns"]["all"].values()) == len(cohort.frame)


# --------------------------------------------------------------------------- MIMIC / MMIST adapters
def _ehr_file(path: Path, variables=EHR_VARIABLE_NAMES, hours: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"hour": range(hours), **{v: np.linspace(1, 2, hours) for v in variables}})
    frame.to_csv(path, index=False)


def _mimic_fixture(root: Path, n_subjects: int = 40, with_cxr: bool = True, id_col: str = "stay_id") -> None:
    rows = []
    for s in range(n_subjects):
        for k in range(2):  # two stays per subject
            stay = f"{s}{k}"
            _ehr_file(root / "ehr" / f"{stay}.csv")
            row = {"subject_id": str(1000 + s), id_col: stay, "mortality": str((s + k) % 2),
                   "long_stay": str(s % 3 == 0 and 1 or 0), "readmission_30d": "" if (s + k) % 2 else "0",
                   "note_path": f"notes/{stay}.txt" if s % 4 else "", "ehr_path": f"ehr/{stay}.csv"}
            if with_cxr:
                row["cxr_frontal"] = f"cxr/{stay}_f.jpg"
                row["cxr_lateral"] = "" if s % 2 else f"cxr/{stay}_l.jpg"
            rows.append(row)
            if s % 4:
                (root / "notes").mkdir(parents=True, exist_ok=True)
                (root / "notes" / f"{stay}.txt").write_text(f"Radiology note {stay}.")
    if with_cxr:
        _write_png(root / "cxr" / "00_f.jpg")
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)


def test_mimic_iv_mm_layout(tmp_path):
    _mimic_fixture(tmp_path / "mimic")
    cfg = {"adapter": "mimic_iv_mm", "root": "mimic", "task": "multitask",
           "labels": ["mortality", "long_stay", "readmission_30d"]}
    cohort = build_cohort("mimic_iv_mm", cfg, tmp_path)
    assert cohort.modalities == {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"}
    assert cohort.task == "multitask" and len(cohort.frame) == 80
    per_patient = cohort.frame.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    subjects = cohort.frame.groupby("split")["patient_id"].nunique()
    assert (subjects["train"], subjects["val"], subjects["test"]) == (29, 5, 6)  # 0.72 / 0.13 / 0.15 of 40 subjects
    assert sum(v is not None for v in cohort.inputs("ehr")) == 80
    assert sum(v is not None for v in cohort.inputs("note")) == 60
    assert cohort.inputs("frontal")[0].endswith("cxr/00_f.jpg")
    assert len(cohort.extra["absent_files"]["frontal"]) == 79
    assert np.isnan(cohort.label_matrix()[:, 2]).sum() == 40  # readmission unknown where left empty


def test_mimic_ehr_files_must_have_the_46_variables(tmp_path):
    _mimic_fixture(tmp_path / "mimic", n_subjects=3)
    _ehr_file(tmp_path / "mimic" / "ehr" / "10.csv", variables=EHR_VARIABLE_NAMES[:40])
    cfg = {"adapter": "mimic_iv_mm", "root": "mimic", "task": "multitask", "labels": ["mortality"]}
    with pytest.raises(CohortError, match=r"without the expected variable columns: 10 \(.*10.csv: lacks \[.*'alt'\]"):
        build_cohort("m", cfg, tmp_path)
    cohort = build_cohort("m", {**cfg, "check_ehr_columns": False}, tmp_path)
    assert cohort.labels == ["mortality"]


def test_mimic_iii_is_external_test_only(tmp_path):
    _mimic_fixture(tmp_path / "m3", n_subjects=5, with_cxr=False, id_col="icustay_id")
    cfg = {"adapter": "mimic_iii", "root": "m3", "task": "multitask",
           "labels": ["mortality", "long_stay", "readmission_30d"]}
    cohort = build_cohort("mimic_iii", cfg, tmp_path)
    assert set(cohort.frame["split"]) == {"test"}
    assert cohort.extra["role"] == "external"
    assert cohort.modalities == {"note": "text", "ehr": "timeseries"}


def test_mmist_official_split_and_alive_dead_labels(tmp_path):
    root = tmp_path / "mmist"
    (root / "ct").mkdir(parents=True)
    np.save(root / "ct" / "c1.npy", np.zeros((3, 4, 4), dtype=np.float32))
    _write_png(root / "wsi" / "c2.png")
    pd.DataFrame({
        "case_id": ["c1", "c2", "c3", "c4"],
        "vital_status_12m": ["alive", "Dead", "1", "0"],
        "split": ["train", "train", "test", "test"],
        "ct_path": ["ct/c1.npy", "", "ct/c3.npy", ""],
        "wsi_path": ["", "wsi/c2.png", "", ""],
        "note_text": ["ccRCC grade 2", "", "grade 4", "grade 3"],
    }).to_csv(root / "clinical.csv", index=False)
    cfg = {"adapter": "mmist_ccrcc", "root": "mmist", "task": "binary", "labels": ["vital_status_12m"]}
    cohort = build_cohort("mmist", cfg, tmp_path)
    assert cohort.frame["split"].tolist() == ["train", "train", "test", "test"]
    assert cohort.label_matrix()[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert cohort.modalities == {"ct": "volume", "wsi": "slide", "note": "text"}
    assert cohort.extra["absent_files"] == {"ct": {"c3": str((root / "ct" / "c3.npy").resolve())}}
    only_ct = build_cohort("mmist", {**cfg, "modalities": {"ct": {"kind": "volume"}}}, tmp_path)
    assert only_ct.modalities == {"ct": "volume"}
    with pytest.raises(CohortError, match="provides modalities"):
        build_cohort("mmist", {**cfg, "modalities": {"ct": {"kind": "image"}}}, tmp_path)


def test_declared_modalities_and_labels_match_built_cohorts(tmp_path):
    assert set(known_adapters()) >= {"manifest", "iu_xray", "mimic_iv_mm", "mimic_iii", "mmist_ccrcc"}
    assert declared_modalities({"adapter": "mimic_iii"}) == {"note": "text", "ehr": "timeseries"}
    assert declared_labels({"adapter": "mmist_ccrcc"}) == ["vital_status_12m"]
    assert declared_labels({**MC_CFG}) == MC_CFG["classes"]
    assert declared_labels({"adapter": "iu_xray", "labels": ["Pleural Effusion"]}) == ["pleural_effusion"]
    base = _all_kinds_fixture(tmp_path)
    cohort = build_cohort("fx", _cfg(), base)
    assert declared_modalities(_cfg()) == cohort.modalities and declared_labels(_cfg()) == cohort.labels


def test_mimic_variable_list():
    assert len(EHR_VARIABLES) == 46 and len(set(EHR_VARIABLE_NAMES)) == 46
    assert all(v.itemids for v in EHR_VARIABLES)
    assert variables_markdown().count("\n") == 47


# --------------------------------------------------------------------------- medmix/datasets/README.md recipes
def _doc_dataset_snippets() -> dict[str, dict]:
    import re

    import yaml

    text = (Path(__file__).resolve().parents[1] / "medmix" / "datasets" / "README.md").read_text()
    found = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        if block.startswith("datasets:"):
            found.update(yaml.safe_load(block)["datasets"])
        elif re.match(r"  \w+:\n    adapter:", block):
            found.update(yaml.safe_load(block))
    return found


def test_docs_recipes_parse_and_fit_the_config_schema():
    import jsonschema
    import yaml

    snippets = _doc_dataset_snippets()
    assert {"mycohort", "openi", "mimic_iv_mm", "mimic_iii", "mmist_ccrcc", "derm7pt", "mmc_amd",
            "harvard_glaucoma"} <= set(snippets)
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas"
                             / "config.schema.yaml").read_text())
    dataset_schema = {**schema["properties"]["datasets"]["additionalProperties"],
                      "definitions": schema.get("definitions", {})}
    for name, cfg in snippets.items():
        assert cfg["adapter"] in known_adapters(), name
        jsonschema.validate(cfg, dataset_schema)
    assert snippets["derm7pt"]["classes"] == ["NEV", "BCC", "MEL", "MISC", "SK"]
    assert set(snippets["derm7pt"]["class_map"].values()) == {"NEV", "BCC", "MEL", "MISC", "SK"}
    assert declared_labels(snippets["openi"]) == [
        "cardiomegaly", "pulmonary_atelectasis", "opacity", "calcified_granuloma", "lung", "thoracic_vertebrae",
        "spine",
        "calcinosis", "markings", "pleural_effusion", "diaphragm", "density", "granulomatous_disease", "nodule",
        "airspace_disease"]


def test_derm7pt_recipe_builds_on_a_fixture(tmp_path):
    recipe = _doc_dataset_snippets()["derm7pt"]
    release = tmp_path / "data" / "release_v0"
    (release / "meta").mkdir(parents=True)
    diagnoses = ["clark nevus", "melanoma (in situ)", "basal cell carcinoma", "seborrheic keratosis", "lentigo"]
    pd.DataFrame({"case_num": range(1, 6), "diagnosis": diagnoses, "clinic": [f"A/c{i}.jpg" for i in range(5)],
                  "derm": [f"A/d{i}.jpg" for i in range(5)], "split": ["train", "train", "val", "test", "test"]}
                 ).to_csv(release / "meta" / "meta_split.csv", index=False)
    _write_png(release / "images" / "A" / "c0.jpg")
    cohort = build_cohort("derm7pt", recipe, tmp_path)
    assert cohort.label_matrix().argmax(axis=1).tolist() == [0, 2, 1, 4, 3]
    assert cohort.inputs("clinic")[0] == str((release / "images" / "A" / "c0.jpg").resolve())
    assert len(cohort.extra["absent_files"]["derm"]) == 5


def test_mimic_iii_can_declare_the_development_modalities(tmp_path):
    _mimic_fixture(tmp_path / "m3", n_subjects=3, with_cxr=False, id_col="icustay_id")
    mods = {"frontal": {"kind": "image"}, "lateral": {"kind": "image"}, "note": {"kind": "text"},
            "ehr": {"kind": "timeseries"}}
    cfg = {"adapter": "mimic_iii", "root": "m3", "task": "multitask", "labels": ["mortality"], "modalities": mods}
    cohort = build_cohort("mimic_iii", cfg, tmp_path)
    assert list(cohort.modalities) == ["frontal", "lateral", "note", "ehr"]
    assert all(v is None for v in cohort.inputs("frontal") + cohort.inputs("lateral"))
    assert "no chest X-rays" in cohort.extra["warnings"][0]
    assert summarize(cohort)["modality_availability"]["frontal"]["all"]["available"] == 0


# --------------------------------------------------------------------------- nothing silently wrong (issue 29)
NULLS_CFG = {"adapter": "manifest", "manifest": "m.csv", "id_column": "sid", "patient_column": "sid",
             "split_ratios": [0.5, 0.25, 0.25], "task": "multilabel", "labels": ["a", "b", "c"],
             "modalities": {"note": {"kind": "text", "column": "note"}}}


def test_parquet_nulls_mean_what_empty_csv_cells_mean(tmp_path):
    """A Parquet null (``pd.NA`` in an Int64, boolean or object column, ``None``, NaN) is an unknown
    label and a missing input, exactly like the empty cell of the same manifest as CSV."""
    frame = pd.DataFrame({
        "sid": ["s0", "s1", "s2", "s3"],
        "a": pd.array([1, pd.NA, 0, 1], dtype="Int64"),
        "b": pd.array([True, False, pd.NA, True], dtype="boolean"),
        "c": pd.Series([1, 0, None, pd.NA], dtype=object),
        "note": pd.array(["x", pd.NA, "y", "z"], dtype="string"),
    })
    frame.to_parquet(tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text("sid,a,b,c,note\ns0,1,true,1,x\ns1,,false,0,\ns2,0,,,y\ns3,1,true,,z\n")
    from_csv = load_manifest_dataset("n", NULLS_CFG, tmp_path)
    from_parquet = load_manifest_dataset("n", {**NULLS_CFG, "manifest": "m.parquet"}, tmp_path)
    np.testing.assert_array_equal(from_parquet.label_matrix(), from_csv.label_matrix())  # NaN == NaN here
    assert np.isnan(from_csv.label_matrix()).sum() == 4
    assert from_parquet.inputs("note") == from_csv.inputs("note") == ["x", None, "y", "z"]


def _manifest_error(tmp_path, text: str) -> str:
    (tmp_path / "m.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(CohortError) as err:
        load_manifest_dataset("n", NULLS_CFG, tmp_path)
    assert f"dataset 'n' (manifest {(tmp_path / 'm.csv').resolve()}): " in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(("text", "words"), [
    # an unquoted comma in the note of line 3 shifts every later column
    ("sid,a,b,c,note\ns0,1,0,1,x\ns1,0,0,1,left, small\ns2,1,1,0,y\n",
     "line 3 has 6 fields, the header (line 1) has 5; every row needs one field per column"),
    ("sid,a,b,c,note\ns0,1,0,1,x\ns1,0,0\n", "line 3 has 3 fields, the header (line 1) has 5"),
    # a quoted cell over two lines and a blank line: the offending row starts on line 6
    ('sid,a,b,c,note\ns0,1,0,1,"two\nlines"\n\ns1,0,0,1,x\ns2,0,0,1,x,extra\n', "line 6 has 6 fields"),
    ("sid,a,b,c,a\ns0,1,0,1,x\n", "column name 'a' appears twice in the header (line 1) (columns 2 and 5)"),
    ('sid,a,b,c,note\ns0,1,0,1,"open quote\n', "unreadable CSV at line 2: unexpected end of data"),
    ("sid,a,b,c,note\ns0,1,0,1,Herzgr\xf6\xdfe\n", "line 2 is not UTF-8 text (byte 0xf6 at offset 30)"),
])
def test_malformed_csv_manifest_names_the_file_and_line(tmp_path, text, words):
    assert words in _manifest_error(tmp_path, text)


def test_duplicate_parquet_column_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table([["s0", "s1"], [1, 0], [0, 1], [1, 1], [0, 0]], names=["sid", "a", "b", "c", "a"])
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(CohortError, match=r"column name 'a' appears twice in the Parquet schema \(columns 2 and 5\)"):
        load_manifest_dataset("n", {**NULLS_CFG, "manifest": "m.parquet"}, tmp_path)


def test_symlink_loop_and_directory_are_per_sample_reasons(tmp_path):
    """A path cell that is a symbolic-link loop, or a note path that is a folder, makes that sample's
    modality missing with the reason (``unusable_files``), not a traceback that fails the dataset."""
    base = _all_kinds_fixture(tmp_path)
    data = base / "data"
    os.symlink("loop.png", data / "img" / "loop.png")  # a link to itself
    (data / "notes" / "folder.txt").mkdir()
    _rewrite(base, lambda f: (f.__setitem__("frontal_path", ["img/a.png", "img/loop.png", "", ""]),
                              f.__setitem__("report_file", ["notes/a.txt", "notes/folder.txt", "", ""])))
    cohort = build_cohort("fx", _cfg(), base)
    root = data.resolve()
    assert cohort.inputs("frontal")[1] is None and cohort.inputs("report")[1] is None
    assert cohort.extra["unusable_files"]["frontal"] == {
        "b": f"path {root / 'img' / 'loop.png'} is a symlink loop (too many levels of symbolic "
             "links); it names no file"}
    assert cohort.extra["unusable_files"]["report"] == {"b": f"note path {root / 'notes' / 'folder.txt'} "
                                                             "is a directory, not a file"}
    os.symlink("../../outside.png", data / "img" / "out.png")  # a loop that also leaves the folder
    os.symlink(data / "img" / "out.png", tmp_path / "outside.png")
    _rewrite(base, lambda f: f.__setitem__("frontal_path", ["img/a.png", "../outside.png", "", ""]))
    with pytest.raises(CohortError,
                       match=r"row 2 \(id 'b'\): path '../outside.png' leads to .*outside the data folder"):
        build_cohort("fx", _cfg(), base)
