"""Bad inputs, end to end through ``snakemake`` (issue 12 item 10).

Every bad input ends either in a clear error naming the file or row (the job fails, and its log
and stderr carry the message line, not only a traceback) or in a missing modality for that one
sample whose reason names the problem and the file (in the feature file's ``failed_samples``
metadata or the cohort's ``unusable_files``, and in the job's log). Inputs that are odd but valid
(16-bit PNG, CMYK JPEG, a JPEG stored sideways with an EXIF orientation, a non-canonical NIfTI
affine, fewer CT slices than sampled, a 1 MB note, constant / one-row / 100,000-row series, a
Parquet manifest with null labels) are decoded correctly.

Three snakemake runs cover everything (see tests/bad_inputs.py for the fixtures):

1. per-sample cases: one mostly good 24-sample manifest cohort in which each case replaces one
   sample's file; run to the five feature files (one cheap offline expert per modality);
2. cohort-level cases: one dataset per case in one config, ``-k`` to every summary;
3. feature caches that disagree with the config: run 1's folder, two caches replaced, ``fit``.

Config-level cases (issue 29: what cannot be meant) are refused by ``validate_config`` before any
job; one ``snakemake -n`` shows the message as the user sees it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from bad_inputs import (
    CASES,
    EXPERTS,
    SERIES_VARIABLES,
    dataset_config,
    grey_image,
    write_cohort,
    write_manifest,
)
from PIL import Image
from workflow_helpers import small_config, snakemake

from medmix.store import read_features, read_metadata, write_features

DATASET = "mycohort"


def base_config(datasets: dict) -> dict:
    cfg = small_config()
    cfg["experts"]["settings"] = {
        "ts_summary": {"preprocessing": {"n_variables": len(SERIES_VARIABLES)}},
        "tabular_raw": {"preprocessing": {"n_features": 2}},
        "ct_intensity_profile": {"preprocessing": {"n_slices": 8}},
    }
    cfg["datasets"] = datasets
    return cfg


def with_committees(ds: dict) -> dict:
    for mod, spec in ds["modalities"].items():
        spec["committee"] = [{"name": EXPERTS[mod], "role": "general"}]
        spec["teacher"] = None
    return ds


def feature_path(workdir, mod: str) -> str:
    return f"results/{DATASET}/features/{mod}/{EXPERTS[mod]}.parquet"


def no_traceback_only(text: str, message: str) -> None:
    """The message line is there (a traceback alone would not do)."""
    assert message in text, f"{message!r} not in:\n{text[-4000:]}"


# ---------------------------------------------------------------------------------------------
# 1. per-sample cases
@pytest.fixture(scope="module")
def per_sample_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bad_per_sample")
    manifest = write_cohort(workdir / "cohort")
    cfg = base_config({DATASET: with_committees(dataset_config())})
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = [feature_path(workdir, mod) for mod in EXPERTS]
    proc = snakemake(workdir, "--cores", "2", *targets, timeout=600)
    return workdir, manifest, proc


def _features(workdir, mod):
    return read_features(workdir / feature_path(workdir, mod))


def _log(workdir, mod) -> str:
    return (workdir / f"logs/extract/{DATASET}/{mod}/{EXPERTS[mod]}.log").read_text()


def _embedding(workdir, mod, sid) -> np.ndarray:
    ff = _features(workdir, mod)
    i = ff.sample_ids.index(sid)
    assert ff.present[i], f"{mod} of {sid} is not present: {ff.metadata.get('failed_samples', {}).get(sid)}"
    return ff.embeddings[i]


#: Refused per-sample inputs: (case, words the reason must contain). The reason also names the file.
REFUSED = [
    ("corrupt_png", "unreadable image"),
    ("truncated_png", "truncated"),
    ("corrupt_jpeg", "unreadable image"),
    ("truncated_jpeg", "truncated"),
    ("huge_png", "10000000000 pixels"),
    ("huge_jpeg", "4225000000 pixels"),
    ("bomb_1_2x_png", "100000000 pixels"),
    ("truncated_nifti", "unreadable volume"),
    ("dicom_missing_slice", "has a gap"),
    ("dicom_two_series", "1.2.826.0.1.3680043.8.498.101, 1.2.826.0.1.3680043.8.498.102"),
    ("dicom_multiframe", "multi-frame (6 frames)"),
    ("series_all_nan", "no observed values"),
    ("series_unknown_variables", "has extra ['mystery_lab']"),  # another variable set than the dataset's
    ("directory_path", "is a directory, not a file"),
    ("decimal_comma_series", "column 'sbp' has 12 value(s) that are not numbers, first at data row 1"),
]


@pytest.mark.parametrize(("case", "words"), REFUSED)
def test_refused_input_is_missing_with_its_reason(per_sample_run, case, words):
    workdir, manifest, _ = per_sample_run
    mod, sid = CASES[case]
    ff = _features(workdir, mod)
    i = ff.sample_ids.index(sid)
    assert len(ff.sample_ids) == len(manifest)  # no sample dropped
    assert not ff.present[i]
    reason = ff.metadata["failed_samples"][sid]
    file = str(workdir / "cohort" / manifest.loc[int(sid[1:]), {"xray": "image", "ct": "ct", "ehr": "series"}[mod]])
    assert words in reason and os.path.realpath(file) in reason, reason
    assert f"sample {sid} recorded as absent: {reason}" in _log(workdir, mod)


#: Odd but valid per-sample inputs that must be decoded, not refused.
def test_16bit_png_decodes_like_its_8bit_original(per_sample_run, tmp_path):
    from extractors.registry import create_extractor

    workdir, _, _ = per_sample_run
    _, sid = CASES["png_16bit"]
    Image.fromarray(grey_image(int(sid[1:])), mode="L").save(tmp_path / "ref.png")
    ex = create_extractor(EXPERTS["xray"])
    ref = ex.embed_batch([ex.prepare(str(tmp_path / "ref.png"))])[0]
    np.testing.assert_allclose(_embedding(workdir, "xray", sid), ref, atol=1e-6)


def test_cmyk_jpeg_decodes_like_its_grey_original(per_sample_run, tmp_path):
    from extractors.registry import create_extractor

    workdir, _, _ = per_sample_run
    _, sid = CASES["cmyk_jpeg"]
    Image.fromarray(grey_image(int(sid[1:])), mode="L").save(tmp_path / "ref.png")
    ex = create_extractor(EXPERTS["xray"])
    ref = ex.embed_batch([ex.prepare(str(tmp_path / "ref.png"))])[0]
    got = _embedding(workdir, "xray", sid)
    other = _embedding(workdir, "xray", "s0")
    assert np.abs(got - ref).sum() < 0.2 * np.abs(other - ref).sum()  # JPEG is lossy: close, not equal


def test_exif_orientation_is_applied(per_sample_run, tmp_path):
    """s10's JPEG holds its picture turned 90° counter-clockwise, with EXIF orientation 6: it is
    embedded upright (as a viewer shows it), not as stored."""
    from extractors.registry import create_extractor

    workdir, _, _ = per_sample_run
    _, sid = CASES["exif_rotated_jpeg"]
    g = grey_image(int(sid[1:]))
    Image.fromarray(g, mode="L").save(tmp_path / "upright.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(g)), mode="L").save(tmp_path / "stored.png")
    ex = create_extractor(EXPERTS["xray"])
    upright, stored = (ex.embed_batch([ex.prepare(str(tmp_path / n))])[0] for n in ("upright.png", "stored.png"))
    got = _embedding(workdir, "xray", sid)
    assert np.abs(got - upright).sum() < 0.05 * np.abs(stored - upright).sum()  # JPEG is lossy: close, not equal


def test_noncanonical_nifti_is_reoriented_not_refused(per_sample_run):
    """s2's file holds s0's volume stored with permuted, flipped axes: the same embedding."""
    workdir, _, _ = per_sample_run
    _, sid = CASES["noncanonical_nifti"]
    np.testing.assert_allclose(_embedding(workdir, "ct", sid), _embedding(workdir, "ct", "s0"), atol=1e-6)


@pytest.mark.parametrize("case", ["fewer_slices", "dicom_good", "note_1mb", "series_constant", "series_single_row",
                                  "series_100k_rows"])
def test_odd_but_valid_input_is_present(per_sample_run, case):
    """Fewer slices than sampled: indices repeat (Eq. 5 rule); a 1 MB note is valid text
    (text_keywords hashes all of it; window-based experts cap it by their documented rule); constant,
    one-row and 100,000-row series are summarised (bounded by MAX_TIMESERIES_CELLS)."""
    workdir, _, _ = per_sample_run
    mod, sid = CASES[case]
    assert np.isfinite(_embedding(workdir, mod, sid)).all()


@pytest.mark.parametrize(("case", "words"), [
    ("empty_note", "empty text: note file {} is empty (0 bytes)"),
    ("whitespace_note", "empty text: note file {} is whitespace only"),
    ("non_utf8_note", "note file {} is not UTF-8 text (byte 0xf6 at offset {}); save it as UTF-8"),
    ("symlink_loop", "path {} is a symlink loop (too many levels of symbolic links); it names no file"),
])
def test_unusable_note_file_is_missing_with_its_reason(per_sample_run, case, words):
    workdir, manifest, _ = per_sample_run
    mod, sid = CASES[case]
    path = (workdir / "cohort").resolve() / manifest.loc[int(sid[1:]), "note"]  # the loop cannot be resolved
    reason = words.format(path, path.read_bytes().find(b"\xf6") if case == "non_utf8_note" else None)
    summary = json.loads((workdir / f"results/{DATASET}/summary.json").read_text())
    assert {"sample_id": sid, "reason": reason} in summary["unusable_files"]["note"]["files"]
    assert f"modality note, sample {sid} recorded as missing: {reason}" in \
        (workdir / f"logs/prepare_dataset/{DATASET}.log").read_text()
    ff = _features(workdir, mod)
    assert not ff.present[ff.sample_ids.index(sid)]


def test_per_sample_run_counts_every_failure_once(per_sample_run):
    """The summary line of each job counts exactly the refused samples; nothing else is lost."""
    workdir, manifest, proc = per_sample_run
    assert "Traceback" not in proc.stderr
    for mod in ("xray", "ct", "ehr"):
        ff = _features(workdir, mod)
        failed = set(ff.metadata["failed_samples"])
        expected = {sid for case, (m, sid) in CASES.items() if m == mod and any(case == r[0] for r in REFUSED
                                                                                if isinstance(r, tuple))}
        assert expected <= failed, (mod, failed)
        assert set(np.array(ff.sample_ids)[~ff.present]) == failed
    note = _features(workdir, "note")
    assert (~note.present).sum() == 4


# ---------------------------------------------------------------------------------------------
# 2. cohort-level cases: each a dataset of its own, all prepared in one run
def _small_rows(n=6):
    return [{"sid": f"s{i}", "pid": f"p{i}", "split": ["train", "train", "val", "test", "train", "test"][i],
             "outcome": i % 2, "image": f"img/{i}.png", "age": 40 + i} for i in range(n)]


def _class_labels(rows, odd: dict[int, str]) -> None:
    """Multiclass labels (benign / malignant), with ``odd`` values at some positions."""
    for i, row in enumerate(rows):
        row["outcome"] = odd.get(i, ["benign", "malignant"][i % 2])


COHORT_ERRORS = {
    # name: (edit of the rows, message the error must contain)
    "dup_ids": (lambda r, d: r[3].update(sid="s1"),
                "duplicate sample ids in column 'sid': row 2 (id 's1'), row 4 (id 's1')"),
    "two_splits": (lambda r, d: r[3].update(pid="p1"),
                   "1 patient(s) appear in more than one split: row 2 (id 's1'): patient 'p1' in train, "
                   "row 4 (id 's3'): patient 'p1' in test"),
    "label_domain": (lambda r, d: r[2].update(outcome="2"),
                     "label 'outcome' outside {{0, 1}} (empty = unknown): row 3 (id 's2'): '2'"),
    "class_domain": (lambda r, d: _class_labels(r, {4: "unsure"}),
                     "label 'outcome' outside classes ['benign', 'malignant'] (empty = unknown): row 5 (id 's4'): "
                     "'unsure'"),
    "non_numeric": (lambda r, d: r[1].update(age="forty"),
                    "tabular modality 'vitals' has non-numeric values: row 2 (id 's1'): age='forty'"),
    "escape_dotdot": (lambda r, d: r[1].update(image="../outside.png"),
                      "modality 'xray', row 2 (id 's1'): path '../outside.png' resolves to {outside}, "
                      "outside the data folder {root}"),
    "escape_absolute": (lambda r, d: r[1].update(image=str(d.parent / "outside.png")),
                        "modality 'xray', row 2 (id 's1'): path '{outside}' resolves to {outside}, "
                        "outside the data folder {root}"),
    "escape_symlink": (lambda r, d: (os.symlink(d.parent / "outside.png", d / "img/link.png"),
                                     r[1].update(image="img/link.png")),
                       "modality 'xray', row 2 (id 's1'): path 'img/link.png' resolves to {outside}, "
                       "outside the data folder {root}"),
    # the manifest's text edited after writing (MANIFEST_TEXT_EDITS): what pandas would read silently
    "dup_column": (lambda r, d: None,
                   "column name 'outcome' appears twice in the header (line 1) (columns 4 and 6); rename one of them"),
    "shifted_row": (lambda r, d: None,
                    "line 3 has 7 fields, the header (line 1) has 6; every row needs one field per column, and a cell "
                    'holding a comma must be quoted ("...")'),
}

#: Edits of a written manifest's text, for what rows of a dict cannot express.
MANIFEST_TEXT_EDITS = {
    # header sid,pid,split,outcome,image,outcome: pandas would rename the second one outcome.1
    "dup_column": lambda text: text.replace(",age\n", ",outcome\n", 1),
    # an unquoted decimal comma in s1's age: pandas would shift the row (or fail without the file name)
    "shifted_row": lambda text: text.replace("\ns1,p1,train,1,img/1.png,41\n", "\ns1,p1,train,1,img/1.png,41,5\n"),
}

#: Cohort-level cases that must build: Parquet nulls (``pd.NA``) mean what empty CSV cells mean.
PARQUET_NULLS = "parquet_null_label"


def _parquet_null_manifest(folder) -> None:
    """The small cohort as Parquet with ``pd.NA`` in an Int64 label column and a string path column,
    and its CSV twin (``manifest.csv``) with empty cells there."""
    rows = _small_rows()
    for i in (2, 5):
        rows[i]["outcome"] = ""
    rows[4]["image"] = ""
    write_manifest(folder / "manifest.csv", rows)
    frame = pd.DataFrame(rows)
    frame["outcome"] = pd.array([None if v == "" else v for v in frame["outcome"]], dtype="Int64")
    frame["image"] = pd.array([None if v == "" else v for v in frame["image"]], dtype="string")
    frame.to_parquet(folder / "manifest.parquet")


@pytest.fixture(scope="module")
def cohort_error_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bad_cohorts")
    Image.fromarray(grey_image(99), mode="L").save(workdir / "outside.png")
    datasets = {}
    for name in [*COHORT_ERRORS, PARQUET_NULLS]:
        folder = workdir / name
        (folder / "img").mkdir(parents=True)
        rows = _small_rows()
        for i in range(len(rows)):
            Image.fromarray(grey_image(i), mode="L").save(folder / f"img/{i}.png")
        if name == PARQUET_NULLS:
            _parquet_null_manifest(folder)
        else:
            COHORT_ERRORS[name][0](rows, folder)
            write_manifest(folder / "manifest.csv", rows)
        if name in MANIFEST_TEXT_EDITS:
            text = (folder / "manifest.csv").read_text()
            (folder / "manifest.csv").write_text(MANIFEST_TEXT_EDITS[name](text))
            assert (folder / "manifest.csv").read_text() != text
        ds = dataset_config(f"{name}/manifest.{'parquet' if name == PARQUET_NULLS else 'csv'}")
        ds["modalities"] = {"xray": ds["modalities"]["xray"], "vitals": {"kind": "tabular", "columns": ["age"]}}
        if name == "class_domain":
            ds.update(task="multiclass", classes=["benign", "malignant"])
        datasets[name] = with_committees(ds)
    (workdir / "config.yaml").write_text(yaml.safe_dump(base_config(datasets)))
    targets = [f"results/{name}/summary.json" for name in [*COHORT_ERRORS, PARQUET_NULLS]]
    proc = snakemake(workdir, "--cores", "2", "-k", *targets, check=False, timeout=600)
    return workdir, proc


@pytest.mark.parametrize("name", list(COHORT_ERRORS))
def test_cohort_error_names_the_row(cohort_error_run, name):
    workdir, proc = cohort_error_run
    assert proc.returncode != 0
    manifest = (workdir / name / "manifest.csv").resolve()
    message = f"CohortError: dataset {name!r} (manifest {manifest}): " + COHORT_ERRORS[name][1].format(
        outside=(workdir / "outside.png").resolve(), root=(workdir / name).resolve())
    log = (workdir / f"logs/prepare_dataset/{name}.log").read_text()
    no_traceback_only(log, f"ERROR medmix: job failed: {message}")
    no_traceback_only(proc.stderr, message)
    assert not (workdir / f"results/{name}/cohort.parquet").exists()


def test_cohort_errors_show_their_message_without_a_traceback(cohort_error_run):
    """A data error is a message on stderr; its traceback is kept in the job's log only."""
    workdir, proc = cohort_error_run
    assert "Traceback" not in proc.stderr.replace("(check log file(s) for error details)", "")
    assert "Traceback" in (workdir / "logs/prepare_dataset/dup_ids.log").read_text()


def test_parquet_null_label_is_unknown_like_an_empty_csv_cell(cohort_error_run):
    """The Parquet manifest's ``pd.NA`` labels are unknown (NaN) and its null path a missing image:
    the cohort the workflow built equals the one from the CSV twin with empty cells."""
    from medmix.cohort import read_cohort
    from medmix.datasets import build_cohort

    workdir, _ = cohort_error_run
    built = read_cohort(workdir / f"results/{PARQUET_NULLS}/cohort.parquet")
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())["datasets"][PARQUET_NULLS]
    twin = build_cohort(PARQUET_NULLS, {**cfg, "manifest": f"{PARQUET_NULLS}/manifest.csv"}, workdir)
    np.testing.assert_array_equal(built.label_matrix(), twin.label_matrix())
    assert np.isnan(built.label_matrix()[:, 0]).tolist() == [False, False, True, False, False, True]
    assert built.inputs("xray") == twin.inputs("xray") and built.inputs("xray")[4] is None
    assert "Traceback" not in (workdir / f"logs/prepare_dataset/{PARQUET_NULLS}.log").read_text()


# ---------------------------------------------------------------------------------------------
# config-level cases: refused before any job, with the key named
def _external_with_other_labels(cfg: dict) -> None:
    ext = with_committees(dataset_config())
    ext.update(role="external", labels=["relapse"])
    cfg["datasets"]["ext"] = ext
    cfg["datasets"][DATASET]["external"] = ["ext"]


CONFIG_ERRORS = {
    "duplicate_label": (lambda c: c["datasets"][DATASET].update(labels=["outcome", "outcome"]),
                        f"config key `datasets.{DATASET}.labels`: 'outcome' listed more than once in "
                        "['outcome', 'outcome']; each entry must be distinct"),
    "external_other_labels": (_external_with_other_labels,
                              f"config key `datasets.ext.labels`: external dataset 'ext' has labels ['relapse'], but "
                              f"{DATASET!r}, which lists it under `external`, has ['outcome'] (only in 'ext': "
                              f"['relapse']; only in {DATASET!r}: ['outcome']); they must be the same"),
    "unsafe_dataset_name": (lambda c: c["datasets"].__setitem__("site/a", c["datasets"].pop(DATASET)),
                            "config key `datasets.site/a`: dataset name 'site/a' may hold only letters, digits and "
                            "'_' ([A-Za-z0-9_]+): it names result folders and is a Snakemake wildcard value"),
    "max_epochs_0": (lambda c: c.__setitem__("method_params", {"meanavg": {"max_epochs": 0}}),
                     "config key `method_params.meanavg.max_epochs`: 0 is less than the minimum of 1"),
}


def _bad_config(case: str) -> dict:
    cfg = base_config({DATASET: with_committees(dataset_config())})
    CONFIG_ERRORS[case][0](cfg)
    return cfg


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_error_names_the_key(case):
    from medmix.plan.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as err:
        validate_config(_bad_config(case))
    assert CONFIG_ERRORS[case][1] in str(err.value)


def test_snakemake_refuses_a_bad_method_setting_before_any_job(tmp_path):
    """What the user sees: the message, at planning time (a dry run), no job and no traceback alone."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_bad_config("max_epochs_0")))
    proc = snakemake(tmp_path, "-n", "--cores", "1", check=False)
    assert proc.returncode != 0
    no_traceback_only(proc.stdout + proc.stderr, CONFIG_ERRORS["max_epochs_0"][1])
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------
# 3. feature caches that disagree with the config
def _replace_cache(path, dim=None, preprocessing=None) -> None:
    ff = read_features(path)
    meta = {k: v for k, v in ff.metadata.items() if k not in ("dim", "n", "n_present", "package_version")}
    if preprocessing:
        meta["preprocessing"] = {**meta["preprocessing"], **preprocessing}
    emb = ff.embeddings if dim is None else np.zeros((len(ff.sample_ids), dim), np.float32)
    write_features(path, ff.sample_ids, emb, ff.present, meta)


def test_cache_of_another_width_or_settings_is_refused_naming_each_file(per_sample_run):
    """Two caches replaced behind snakemake's back (newer than their inputs, so not rebuilt): one
    of another width, one written with other preprocessing. ``fit`` names both and trains nothing.
    (In run 1's folder, restored afterwards: a copy elsewhere would change the inputs' paths.)"""
    workdir, _, _ = per_sample_run
    wide, other = (workdir / feature_path(workdir, mod) for mod in ("xray", "ehr"))
    saved = {p: (p.read_bytes(), p.stat()) for p in (wide, other)}
    target = f"results/{DATASET}/runs/meanavg/none/fit.json"
    try:
        _replace_cache(wide, dim=7)
        _replace_cache(other, preprocessing={"stats": ["last"]})
        assert read_metadata(wide)["dim"] == 7
        proc = snakemake(workdir, "--cores", "2", target, check=False, timeout=600)
    finally:
        for p, (raw, st) in saved.items():
            p.write_bytes(raw)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert proc.returncode != 0
    assert "rule extract" not in proc.stderr + proc.stdout  # the replaced caches were not rebuilt
    log = (workdir / f"logs/fit/{DATASET}/meanavg/none.log").read_text()
    for text in (log, proc.stderr):
        no_traceback_only(text, "FeatureStoreError: 2 feature file(s) cannot be used:")
        no_traceback_only(text, f"- {feature_path(workdir, 'xray')}: cache does not match the config "
                                "(dim: cached 7, config 160)")
        no_traceback_only(text, f"- {feature_path(workdir, 'ehr')}: cache does not match the config "
                                "(preprocessing: cached")
    assert not (workdir / target).exists()
