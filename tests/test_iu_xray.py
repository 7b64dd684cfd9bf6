"""The OpenI / IU X-ray adapter on the real 120-report sample and on ecgen-radiology XML fixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest

from medmix.cohort import CohortError, read_cohort, write_cohort
from medmix.datasets import build_cohort
from medmix.datasets.iu_xray import DEFAULT_FINDINGS, image_stem, main, rank_headings, slug, split_mesh
from medmix.datasets.summary import write_summary

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray_sample"
FINDINGS = [slug(h) for h in DEFAULT_FINDINGS]


@pytest.fixture(scope="module")
def sample() -> Path:
    if not (SAMPLE / "indiana_reports.csv").is_file():
        pytest.fail(f"the real IU X-ray sample is missing: expected {SAMPLE} (../shared/data beside the repository)")
    return SAMPLE


def _csv_cfg(sample: Path, images_dir: Path | None = None, **extra) -> dict:
    cfg = {
        "adapter": "iu_xray",
        "task": "multilabel",
        "reports_csv": str(sample / "indiana_reports.csv"),
        "projections_csv": str(sample / "indiana_projections.csv"),
        "images_dir": str(images_dir if images_dir is not None else sample / "images"),
    }
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def cohort(sample):
    return build_cohort("iu_xray_sample", _csv_cfg(sample), ".")


def _labels(cohort, sid: str) -> dict[str, float]:
    row = cohort.frame.set_index("sample_id").loc[sid]
    return {f: float(row[f"label:{f}"]) for f in cohort.labels}


# --------------------------------------------------------------------------- real sample, two-CSV layout
def test_sample_counts_and_split(cohort):
    assert len(cohort.frame) == 120 and cohort.frame["patient_id"].nunique() == 120
    assert cohort.labels == FINDINGS and len(FINDINGS) == 15
    assert cohort.modalities == {"frontal": "image", "lateral": "image", "note": "text"}
    assert cohort.frame["split"].value_counts().to_dict() == {"train": 78, "test": 24, "val": 18}  # 0.65/0.15/0.20
    assert (cohort.frame["sample_id"] == cohort.frame["patient_id"]).all()


def test_sample_split_is_deterministic_and_patient_disjoint(sample, cohort):
    again = build_cohort("iu_xray_sample", _csv_cfg(sample), ".")
    assert again.frame["split"].tolist() == cohort.frame["split"].tolist()
    parts = {s: set(cohort.frame.loc[cohort.frame["split"] == s, "patient_id"]) for s in ("train", "val", "test")}
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    other_seed = build_cohort("iu_xray_sample", _csv_cfg(sample, split_seed=1), ".")
    assert other_seed.frame["split"].tolist() != cohort.frame["split"].tolist()


def test_sample_labels_on_known_rows(cohort):
    # uid 1: MeSH "normal" -> negative for every finding
    assert set(_labels(cohort, "CXR1").values()) == {0.0}
    # uid 2: "Cardiomegaly/borderline;Pulmonary Artery/enlarged"
    assert {k for k, v in _labels(cohort, "CXR2").items() if v == 1} == {"cardiomegaly"}
    # uid 4: COPD; Bullous Emphysema; Pulmonary Fibrosis/...; Cicatrix/...; Opacity/... (x4)
    assert {k for k, v in _labels(cohort, "CXR4").items() if v == 1} == {"opacity"}
    # uids 39 and 43 are "No Indexing": labels unknown, not negative
    for sid in ("CXR39", "CXR43"):
        assert all(math.isnan(v) for v in _labels(cohort, sid).values())
    assert np.isnan(cohort.label_matrix()).any(axis=1).sum() == 2


def test_sample_labels_match_an_independent_reading_of_the_csv(sample, cohort):
    reports = pd.read_csv(sample / "indiana_reports.csv", dtype=str, keep_default_na=False)
    by_id = cohort.frame.set_index("sample_id")
    for heading, name in zip(DEFAULT_FINDINGS, FINDINGS, strict=True):
        expected = reports["MeSH"].map(
            lambda m, h=heading: any(t.split("/")[0].strip().lower() == h.lower() for t in m.split(";")))
        indexed = ~reports["MeSH"].isin(["No Indexing", ""])
        got = by_id.loc[("CXR" + reports["uid"]).tolist(), f"label:{name}"].to_numpy()
        assert (got[indexed.to_numpy()] == expected[indexed].astype(float).to_numpy()).all(), heading
    positives = {f: int(np.nansum(cohort.frame[f"label:{f}"])) for f in FINDINGS}
    assert positives["lung"] == 18 and positives["calcified_granuloma"] == 11 and positives["opacity"] == 10


def test_sample_absent_images_are_missing_and_counted(sample, cohort):
    projections = pd.read_csv(sample / "indiana_projections.csv", dtype=str)
    has = projections.groupby("uid")["projection"].agg(set)
    n_frontal = int(has.map(lambda s: "Frontal" in s).sum())
    n_lateral = int(has.map(lambda s: "Lateral" in s).sum())
    assert (n_frontal, n_lateral) == (116, 112)
    assert all(v is None for v in cohort.inputs("frontal") + cohort.inputs("lateral"))
    absent = cohort.extra["absent_files"]
    assert len(absent["frontal"]) == n_frontal and len(absent["lateral"]) == n_lateral
    assert absent["frontal"]["CXR1"].endswith("images/1_IM-0001-4001.dcm.png")  # the first Frontal of uid 1
    assert absent["lateral"]["CXR1"].endswith("images/1_IM-0001-3001.dcm.png")
    only_lateral = set(has[has == {"Lateral"}].index)
    assert {f"CXR{u}" for u in only_lateral}.isdisjoint(absent["frontal"])  # no frontal: empty, not absent
    assert any("does not exist" in w for w in cohort.extra["warnings"])


def test_sample_notes(cohort):
    notes = dict(zip(cohort.sample_ids, cohort.inputs("note"), strict=True))
    assert notes["CXR1"].startswith("FINDINGS: The cardiac silhouette and mediastinum size are within normal limits.")
    assert notes["CXR1"].endswith("\nIMPRESSION: Normal chest x-XXXX.")
    assert notes["CXR3"].startswith("IMPRESSION: No displaced rib fractures")  # no findings section
    assert sum(n is None for n in notes.values()) == 1  # one report with neither section


def test_present_images_are_used_in_both_spellings(sample, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    blank = Image.fromarray(np.zeros((4, 4), dtype=np.uint8))
    blank.save(images / "1_IM-0001-4001.dcm.png")  # Kaggle spelling, frontal of uid 1
    blank.save(images / "CXR2_2_IM-0652-2001.png")  # Open-i spelling, lateral of uid 2
    cohort = build_cohort("iu", _csv_cfg(sample, images_dir=images), ".")
    frontal = dict(zip(cohort.sample_ids, cohort.inputs("frontal"), strict=True))
    lateral = dict(zip(cohort.sample_ids, cohort.inputs("lateral"), strict=True))
    assert frontal["CXR1"] == str((images / "1_IM-0001-4001.dcm.png").resolve())
    assert lateral["CXR2"] == str((images / "CXR2_2_IM-0652-2001.png").resolve())
    assert len(cohort.extra["absent_files"]["frontal"]) == 115
    assert "warnings" not in cohort.extra


def test_summary_of_the_sample(sample, cohort, tmp_path):
    write_cohort(cohort, tmp_path / "cohort.parquet")
    summary = write_summary(read_cohort(tmp_path / "cohort.parquet"), tmp_path / "s.json", tmp_path / "s.md")
    assert summary["splits"]["test"] == {"samples": 24, "patients": 24}
    assert summary["label_prevalence"]["cardiomegaly"]["all"] == {"positive": 6, "known": 118, "prevalence": 0.0508}
    assert summary["modality_availability"]["note"]["all"]["available"] == 119
    assert summary["absent_files"]["frontal"]["count"] == 116
    assert summary["availability_patterns"]["all"] == {"note": 119, "(none)": 1}
    md = (tmp_path / "s.md").read_text()
    assert "| frontal | 0/120 (0.0%) [116] |" in md and "# Dataset summary: iu_xray_sample" in md


def test_custom_label_list_and_modality_subset(sample):
    cfg = _csv_cfg(sample, labels=["Cardiomegaly", "Pulmonary Emphysema"], modalities={"note": {"kind": "text"}})
    cohort = build_cohort("iu", cfg, ".")
    assert cohort.labels == ["cardiomegaly", "pulmonary_emphysema"] and cohort.modalities == {"note": "text"}
    assert int(np.nansum(cohort.frame["label:pulmonary_emphysema"])) == 2


def test_rank_headings_rule_and_cli(sample, capsys):
    ranking = rank_headings([["normal"], ["Opacity/lung/base", "Opacity/lung/apex", "Nodule"], ["Nodule/right"],
                             ["No Indexing"], ["opacity"]])
    assert ranking == [("Nodule", 2), ("Opacity", 2)]  # per report, case-insensitive, non-findings excluded
    main([str(sample / "indiana_reports.csv"), "--top", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("120 reports")
    assert out[1].split() == ["18", "Lung"]


def test_image_stem_and_mesh_parsing():
    assert image_stem("1_IM-0001-4001.dcm.png") == "1_IM-0001-4001"
    assert image_stem("CXR1_1_IM-0001-4001.png") == "1_IM-0001-4001"
    assert image_stem("CXR12_12_IM-0133-1001") == "12_IM-0133-1001"
    assert split_mesh("A/b; C ;") == ["A/b", "C"]


def test_projection_filename_escaping_images_dir_is_refused(sample, tmp_path):
    (tmp_path / "images").mkdir()
    pd.DataFrame({"uid": ["1"], "filename": ["../../etc/passwd"], "projection": ["Frontal"]}).to_csv(
        tmp_path / "proj.csv", index=False)
    cfg = _csv_cfg(sample, images_dir=tmp_path / "images", projections_csv=str(tmp_path / "proj.csv"))
    with pytest.raises(CohortError, match="outside the data folder"):
        build_cohort("iu", cfg, ".")


def test_configuration_errors(sample):
    with pytest.raises(CohortError, match="'reports_csv'.*'reports_xml_dir'"):
        build_cohort("iu", {"adapter": "iu_xray", "task": "multilabel"}, ".")
    with pytest.raises(CohortError, match="projections_csv"):
        build_cohort("iu", {**_csv_cfg(sample), "projections_csv": None}, ".")
    with pytest.raises(CohortError, match="provides modalities"):
        build_cohort("iu", {**_csv_cfg(sample), "modalities": {"note": {"kind": "image"}}}, ".")


# --------------------------------------------------------------------------- ecgen-radiology XML layout
def _xml_report(uid: str, findings: str, impression: str, major: list[str], automatic: list[str],
                images: list[str]) -> str:
    """One report in the Open-i ecgen-radiology format (structure of the released files)."""
    def section(label, text):
        return (f'<AbstractText Label="{label}">{escape(text)}</AbstractText>' if text
                else f'<AbstractText Label="{label}"/>')

    mesh = "".join(f"<major>{escape(m)}</major>" for m in major) + "".join(
        f"<automatic>{escape(a)}</automatic>" for a in automatic)
    parents = "".join(
        f'<parentImage id="{i}"><figureId>F{k + 1}</figureId><caption>Xray Chest PA and Lateral</caption>'
        f'<panel type="single"><url>/hadoop/storage/radiology/extract/{i}.jpg</url></panel></parentImage>'
        for k, i in enumerate(images))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/>'
        f'<uId id="CXR{uid}"/><pmcId id="{uid}"/><docSource>CXR</docSource><IUXRId id="{uid}"/>'
        '<licenseType>open-access</licenseType><publisher>Indiana University</publisher>'
        '<MedlineCitation Owner="Indiana University" Status="supplied by publisher"><Article PubModel="Electronic">'
        '<ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle><Abstract>'
        + section("COMPARISON", "None.") + section("INDICATION", "cough") + section("FINDINGS", findings)
        + section("IMPRESSION", impression)
        + f"</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{parents}</eCitation>"
    )


def test_xml_layout_fixture(sample, tmp_path):
    xml_dir = tmp_path / "ecgen-radiology"
    xml_dir.mkdir()
    (xml_dir / "7.xml").write_text(_xml_report(
        "7", "Heart is enlarged. Small left effusion.", "Cardiomegaly & effusion.",
        ["Cardiomegaly/mild", "Pleural Effusion/left/small"], ["Opacity"],
        ["CXR7_7_IM-2263-1001", "CXR7_7_IM-2263-2001", "CXR7_7_IM-2263-3001"]))
    (xml_dir / "10.xml").write_text(_xml_report("10", "", "", ["No Indexing"], [], ["CXR10_10_IM-0002-2001"]))
    (xml_dir / "8.xml").write_text(_xml_report("8", "Clear lungs.", "", ["normal"], [], ["CXR8_8_IM-9999-1001"]))
    pd.DataFrame({
        "uid": ["7", "7", "7", "10"],
        "filename": ["7_IM-2263-2001.dcm.png", "7_IM-2263-1001.dcm.png", "7_IM-2263-3001.dcm.png",
                     "10_IM-0002-2001.dcm.png"],
        "projection": ["Lateral", "Frontal", "Frontal", "Frontal"],
    }).to_csv(tmp_path / "projections.csv", index=False)
    from PIL import Image

    (tmp_path / "png").mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "png" / "CXR7_7_IM-2263-1001.png")
    cfg = {"adapter": "iu_xray", "task": "multilabel", "reports_xml_dir": str(xml_dir),
           "projections_csv": str(tmp_path / "projections.csv"), "images_dir": str(tmp_path / "png"),
           "split_ratios": [1, 0, 0]}
    cohort = build_cohort("iu_xml", cfg, ".")
    assert cohort.sample_ids == ["CXR7", "CXR8", "CXR10"]  # numeric uid order
    labels = {sid: _labels(cohort, sid) for sid in cohort.sample_ids}
    assert {k for k, v in labels["CXR7"].items() if v == 1} == {"cardiomegaly", "pleural_effusion"}  # majors only
    assert set(labels["CXR8"].values()) == {0.0}
    assert all(math.isnan(v) for v in labels["CXR10"].values())
    notes = dict(zip(cohort.sample_ids, cohort.inputs("note"), strict=True))
    assert notes == {"CXR7": "FINDINGS: Heart is enlarged. Small left effusion.\nIMPRESSION: Cardiomegaly & effusion.",
                     "CXR8": "FINDINGS: Clear lungs.", "CXR10": None}
    frontal = dict(zip(cohort.sample_ids, cohort.inputs("frontal"), strict=True))
    assert frontal["CXR7"] == str((tmp_path / "png" / "CXR7_7_IM-2263-1001.png").resolve())  # first Frontal
    assert cohort.extra["absent_files"]["lateral"]["CXR7"].endswith("7_IM-2263-2001.dcm.png")
    assert cohort.extra["absent_files"]["frontal"] == {
        "CXR10": str((tmp_path / "png" / "10_IM-0002-2001.dcm.png").resolve())}
    assert cohort.extra["layout"] == "ecgen-radiology XML"
    assert frontal["CXR8"] is None and "CXR8" not in cohort.extra["absent_files"]["frontal"]
    assert cohort.extra["warnings"] == [
        "1 report image(s) have no row in projections_csv and are not used: CXR8_8_IM-9999-1001"]


def test_xml_layout_agrees_with_csv_layout_on_real_reports(sample, tmp_path):
    reports = pd.read_csv(sample / "indiana_reports.csv", dtype=str, keep_default_na=False).head(25)
    projections = pd.read_csv(sample / "indiana_projections.csv", dtype=str, keep_default_na=False)
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    for r in reports.to_dict("records"):
        own = projections.loc[projections["uid"] == r["uid"], "filename"]
        images = [f"CXR{r['uid']}_{image_stem(f)}" for f in own]
        (xml_dir / f"{r['uid']}.xml").write_text(
            _xml_report(r["uid"], r["findings"], r["impression"], split_mesh(r["MeSH"]), [], images))
    reports.to_csv(tmp_path / "reports.csv", index=False)
    common = {"projections_csv": str(sample / "indiana_projections.csv"), "images_dir": str(tmp_path / "none")}
    from_csv = build_cohort("a", {**_csv_cfg(sample), **common, "reports_csv": str(tmp_path / "reports.csv")}, ".")
    from_xml = build_cohort("a", {"adapter": "iu_xray", "reports_xml_dir": str(xml_dir), **common}, ".")
    left = from_csv.frame.set_index("sample_id").sort_index()
    right = from_xml.frame.set_index("sample_id").sort_index()
    pd.testing.assert_frame_equal(left, right)
    assert from_csv.extra["absent_files"] == from_xml.extra["absent_files"]


def test_xml_refuses_entities_and_malformed_files(tmp_path):
    xml_dir = tmp_path / "x"
    xml_dir.mkdir()
    (tmp_path / "p.csv").write_text("uid,filename,projection\n")
    cfg = {"adapter": "iu_xray", "reports_xml_dir": str(xml_dir), "projections_csv": str(tmp_path / "p.csv")}
    with pytest.raises(CohortError, match="no .xml reports"):
        build_cohort("x", cfg, ".")
    (xml_dir / "1.xml").write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><eCitation>&x;</eCitation>')
    with pytest.raises(CohortError, match="declares XML entities"):
        build_cohort("x", cfg, ".")
    (xml_dir / "1.xml").write_text("<eCitation><MeSH></eCitation>")
    with pytest.raises(CohortError, match="1.xml is not well-formed XML"):
        build_cohort("x", cfg, ".")


def test_summary_json_is_serialisable_with_real_notes(cohort, tmp_path):
    summary = write_summary(cohort, tmp_path / "a.json", tmp_path / "a.md")
    assert json.loads((tmp_path / "a.json").read_text())["n_samples"] == summary["n_samples"] == 120


# --------------------------------------------------------------------------- note_sections: separate
def test_sections_as_separate_text_modalities(sample):
    cohort = build_cohort("iu_sections", _csv_cfg(sample, note_sections="separate"), ".")
    assert cohort.modalities == {"frontal": "image", "lateral": "image", "indication": "text", "findings": "text",
                                 "impression": "text"}
    raw = pd.read_csv(sample / "indiana_reports.csv", dtype=str, keep_default_na=False)
    raw["sample_id"] = "CXR" + raw["uid"]
    raw = raw.set_index("sample_id").loc[cohort.sample_ids]
    for section in ("indication", "findings", "impression"):
        got = cohort.inputs(section)
        want = [t.strip() or None for t in raw[section]]
        assert got == want, section
    # Natural missingness: some findings sections are empty in the real sample.
    assert any(v is None for v in cohort.inputs("findings"))
    # Same samples, labels and split as the joined note.
    joined = build_cohort("iu_sections", _csv_cfg(sample), ".")
    assert joined.frame["split"].tolist() == cohort.frame["split"].tolist()
    np.testing.assert_array_equal(joined.label_matrix(), cohort.label_matrix())


def test_sections_subset_and_default_modalities(sample):
    from medmix.datasets.declared import declared_modalities, default_modalities

    cfg = _csv_cfg(sample, note_sections="separate")
    assert default_modalities(cfg) == {
        "frontal": {"kind": "image", "column": "frontal"}, "lateral": {"kind": "image", "column": "lateral"},
        "indication": {"kind": "text", "column": "indication"}, "findings": {"kind": "text", "column": "findings"},
        "impression": {"kind": "text", "column": "impression"}}
    assert default_modalities(_csv_cfg(sample)) == {
        "frontal": {"kind": "image", "column": "frontal"}, "lateral": {"kind": "image", "column": "lateral"},
        "note": {"kind": "text", "column": "note"}}
    only = {**cfg, "modalities": {"findings": {"kind": "text"}, "impression": {"kind": "text"}}}
    assert declared_modalities(only) == {"findings": "text", "impression": "text"}
    assert list(default_modalities(only)) == ["findings", "impression"]
    assert build_cohort("x", only, ".").modalities == {"findings": "text", "impression": "text"}
    with pytest.raises(CohortError, match="note_sections"):
        build_cohort("x", _csv_cfg(sample, note_sections="split"), ".")
    with pytest.raises(CohortError, match="provides modalities"):
        build_cohort("x", {**cfg, "modalities": {"note": {"kind": "text"}}}, ".")
    with pytest.raises(CohortError, match="no default modalities"):
        default_modalities({"adapter": "manifest"})


def test_xml_sections(tmp_path):
    xml_dir = tmp_path / "x"
    xml_dir.mkdir()
    (xml_dir / "7.xml").write_text(_xml_report("7", "Heart is enlarged.", "", ["Cardiomegaly"], [], []))
    (tmp_path / "p.csv").write_text("uid,filename,projection\n")
    cfg = {"adapter": "iu_xray", "reports_xml_dir": str(xml_dir), "projections_csv": str(tmp_path / "p.csv"),
           "note_sections": "separate", "split_ratios": [1, 0, 0]}
    cohort = build_cohort("x", cfg, ".")
    assert cohort.inputs("indication") == ["cough"]
    assert cohort.inputs("findings") == ["Heart is enlarged."]
    assert cohort.inputs("impression") == [None]
