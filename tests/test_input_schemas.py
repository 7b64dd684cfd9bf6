"""Issue 12 (1, 2, 4): series of any width, categorical tabular columns, external cohorts without a split.

Every cohort here is a tiny synthetic manifest written by the test; extraction runs the real
experts through the real extraction job on the labels-free input view.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from extractors.base import InputError
from extractors.inputs import read_tabular, read_timeseries
from extractors.job import extract_job
from extractors.registry import create_extractor
from medmix.cohort import CohortError, read_cohort, write_cohort
from medmix.datasets.manifest import load_manifest_dataset
from medmix.datasets.schema import adopt_reference, series_header
from medmix.plan.config import REPO_ROOT, ConfigError, validate_config
from medmix.store import read_features
from medmix.store.inputs import read_input_view, write_input_view

VARS48 = [f"lab_{k:02d}" for k in range(48)]


def _series(path: Path, columns: list[str], rng, steps: int = 10, shuffle: bool = True) -> pd.DataFrame:
    """A series with a ``time`` column (irregular: hours 0, 1.5, 4, ...), rows shuffled on disk."""
    times = np.cumsum(rng.uniform(0.5, 3.0, steps))
    frame = pd.DataFrame(rng.normal(size=(steps, len(columns))), columns=columns)
    frame.insert(0, "time", times)
    on_disk = frame.sample(frac=1.0, random_state=1) if shuffle else frame
    on_disk.to_csv(path, index=False)
    return frame  # in time order


def _cohort_dir(tmp_path: Path, n: int = 8, odd: dict[int, list[str]] | None = None) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    (tmp_path / "ts").mkdir(parents=True)
    rows, frames = [], {}
    sexes = ["Male", "Female"]
    for i in range(n):
        columns = (odd or {}).get(i, VARS48)
        frames[f"s{i}"] = _series(tmp_path / "ts" / f"{i}.csv", columns, rng)
        rows.append({"sid": f"s{i}", "pid": f"p{i}", "y": i % 2, "series": f"ts/{i}.csv",
                     "age": 40 + i, "sex": sexes[i % 2], "split": "train" if i < n - 2 else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv", frames


def _cfg(manifest: Path, **extra) -> dict:
    cfg = {"adapter": "manifest", "manifest": str(manifest), "id_column": "sid", "patient_column": "pid",
           "split_column": "split", "task": "binary", "labels": ["y"],
           "modalities": {"ehr": {"kind": "timeseries", "column": "series"},
                          "vitals": {"kind": "tabular", "columns": ["age", "sex"], "categorical": ["sex"]}}}
    cfg.update(extra)
    return cfg


def _extract(tmp_path: Path, cohort, modality: str, expert: str, max_failed_fraction: float = 0.5):
    view_path = tmp_path / f"{cohort.name}_inputs.parquet"
    write_input_view(view_path, cohort.input_view())
    out = tmp_path / f"{cohort.name}_{modality}_{expert}.parquet"
    summary = extract_job(str(view_path), modality, expert, str(out), identity={}, runtime={},
                          max_failed_fraction=max_failed_fraction)
    return read_features(out), summary


# -- 1. series of any width ---------------------------------------------------------------
def test_48_variable_series_with_a_time_column_extract_with_the_datasets_width(tmp_path):
    manifest, frames = _cohort_dir(tmp_path)
    cohort = load_manifest_dataset("icu48", _cfg(manifest), tmp_path)
    assert cohort.schemas["ehr"] == {"variables": VARS48, "source": "inferred"}  # "time" is not a variable
    assert read_input_view(_write_view(tmp_path, cohort)).schema("ehr")["variables"] == VARS48

    summ, _ = _extract(tmp_path, cohort, "ehr", "ts_summary")
    assert summ.dim == 6 * 48 and summ.present.all()
    assert summ.metadata["variables"] == VARS48
    assert summ.metadata["input_schema"]["variables"] == VARS48
    # "last" follows the time column, not the (shuffled) row order of the file; mean is order-free
    truth = frames["s0"]
    stats = summ.embeddings[0].reshape(48, 6)
    np.testing.assert_allclose(stats[:, 0], truth[VARS48].iloc[-1].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats[:, 1], truth[VARS48].mean().to_numpy(), rtol=1e-4, atol=1e-6)

    rocket, _ = _extract(tmp_path, cohort, "ehr", "ts_minirocket")
    assert rocket.dim == 512 and rocket.present.all() and rocket.metadata["variables"] == VARS48


def _write_view(tmp_path: Path, cohort) -> Path:
    path = tmp_path / "view.parquet"
    write_input_view(path, cohort.input_view())
    return path


def test_a_series_with_another_variable_set_is_recorded_missing_with_the_reason(tmp_path, caplog):
    renamed = [*VARS48[:47], "something_else"]
    manifest, _ = _cohort_dir(tmp_path, odd={3: renamed})
    cohort = load_manifest_dataset("icu48", _cfg(manifest), tmp_path)
    assert cohort.schemas["ehr"]["variables"] == VARS48  # the commonest set wins
    assert any("s3" in w and "another variable set" in w for w in cohort.extra["warnings"])
    feats, summary = _extract(tmp_path, cohort, "ehr", "ts_summary")
    assert feats.present.tolist() == [True] * 3 + [False] + [True] * 4
    assert summary["failed"] == 1  # counts toward the job's failed fraction
    (category,) = feats.metadata["failed_reasons"]  # the recorded reason category (numbers masked)
    assert "different variable set" in category and "something_else" in category
    (logged,) = [r.getMessage() for r in caplog.records if "recorded as absent" in r.getMessage()]
    assert "sample s3" in logged and "3.csv" in logged and "lacks ['lab_47'], has extra ['something_else']" in logged
    # more than max_failed_fraction of such samples fails the job as before
    with pytest.raises(Exception, match="different variable set"):
        _extract(tmp_path, cohort, "ehr", "ts_minirocket", max_failed_fraction=0.0)


def test_declared_variables_fix_the_order_and_reorder_each_file(tmp_path):
    manifest, _ = _cohort_dir(tmp_path, n=4)
    declared = list(reversed(VARS48))
    cfg = _cfg(manifest)
    cfg["modalities"]["ehr"]["variables"] = declared
    cohort = load_manifest_dataset("icu48", cfg, tmp_path)
    assert cohort.schemas["ehr"] == {"variables": declared, "source": "declared"}
    ex = create_extractor("ts_summary", {"input_schema": cohort.schemas["ehr"]})
    path = cohort.inputs("ehr")[0]
    stats = ex.embed_batch([ex.prepare(path)]).reshape(48, 6)
    direct = read_timeseries(path)
    np.testing.assert_allclose(stats[:, 1], direct[declared].mean().to_numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(CohortError, match="time column"):
        cfg["modalities"]["ehr"]["variables"] = ["hour", *VARS48]
        load_manifest_dataset("icu48", cfg, tmp_path)


def test_charttime_orders_rows_and_a_bad_time_is_a_clear_reason(tmp_path):
    frame = pd.DataFrame({"charttime": ["2024-01-01 12:00", "2024-01-01 08:00", "2024-01-02 01:00"],
                          "hr": [3.0, 1.0, 9.0]})
    frame.to_csv(tmp_path / "a.csv", index=False)
    assert read_timeseries(str(tmp_path / "a.csv"))["hr"].tolist() == [1.0, 3.0, 9.0]
    frame.loc[1, "charttime"] = "not a time"
    frame.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(InputError, match=r"b\.csv.*'charttime'.*unparseable"):
        read_timeseries(str(tmp_path / "b.csv"))


def test_without_a_recorded_list_the_46_variable_default_is_unchanged():
    ex = create_extractor("ts_summary")
    assert ex.dim == 276 and ex.metadata()["variables"] is None


# -- 2. categorical tabular columns --------------------------------------------------------
def test_categorical_one_hot_uses_training_categories_and_flags_unseen(tmp_path):
    pd.DataFrame({
        "sid": ["a", "b", "c", "d", "e", "f"], "pid": ["a", "b", "c", "d", "e", "f"], "y": [0, 1, 0, 1, 0, 1],
        "age": [30, 40, "", 50, 60, 70],
        "sex": ["Male", "Female", "Female", "Unknown", "Other", ""],
        "split": ["train", "train", "train", "val", "test", "test"],
    }).to_csv(tmp_path / "m.csv", index=False)
    cfg = _cfg(tmp_path / "m.csv")
    cfg["modalities"] = {"vitals": cfg["modalities"]["vitals"]}
    cohort = load_manifest_dataset("tab", cfg, tmp_path)
    # "Unknown" is only in a validation row: not a category
    assert cohort.schemas["vitals"] == {"columns": ["age", "sex"], "categorical": {"sex": ["Female", "Male"]}}
    feats, summary = _extract(tmp_path, cohort, "vitals", "tabular_raw")
    # age | sex=Female, sex=Male, unseen | missing(age), missing(sex)
    assert feats.dim == 1 + 3 + 2 and summary["failed"] == 0
    expected = {
        "a": [30, 0, 1, 0, 0, 0], "b": [40, 1, 0, 0, 0, 0], "c": [0, 1, 0, 0, 1, 0],
        "d": [50, 0, 0, 1, 0, 0], "e": [60, 0, 0, 1, 0, 0], "f": [70, 0, 0, 0, 0, 1],
    }
    for sid, row in zip(feats.sample_ids, feats.embeddings, strict=True):
        np.testing.assert_array_equal(row, np.array(expected[sid], np.float32), err_msg=sid)
    assert feats.metadata["input_schema"]["categorical"] == {"sex": ["Female", "Male"]}


def test_infer_categorical_opt_in_and_the_error_names_the_options(tmp_path):
    manifest, _ = _cohort_dir(tmp_path, n=4)
    cfg = _cfg(manifest)
    cfg["modalities"]["vitals"] = {"kind": "tabular", "columns": ["age", "sex"]}
    with pytest.raises(CohortError) as info:
        load_manifest_dataset("tab", cfg, tmp_path)
    msg = str(info.value)
    assert "row 1 (id 's0'): sex='Male'" in msg
    assert "modalities.vitals.categorical: ['sex']" in msg and "modalities.vitals.infer_categorical: true" in msg
    cfg["modalities"]["vitals"]["infer_categorical"] = True
    cohort = load_manifest_dataset("tab", cfg, tmp_path)
    assert cohort.schemas["vitals"]["categorical"] == {"sex": ["Female", "Male"]}
    with pytest.raises(InputError, match="categorical: \\[...\\].*infer_categorical: true"):
        read_tabular('[1.0, "Male"]')


def test_changing_the_category_list_changes_the_input_fingerprint(tmp_path):
    """Same input cells, another split: only a changed category list changes what stage 1 reads."""
    manifest, _ = _cohort_dir(tmp_path, n=4)  # s0, s1 train; s2, s3 test
    table = pd.read_csv(manifest)
    table.loc[3, "sex"] = "Other"
    table.to_csv(manifest, index=False)

    def fingerprint(edit):
        edit(table)
        table.to_csv(manifest, index=False)
        cohort = load_manifest_dataset("tab", _cfg(manifest), tmp_path)
        return cohort.schemas["vitals"]["categorical"]["sex"], cohort.input_view().fingerprint("vitals")

    cats, before = fingerprint(lambda t: None)
    assert cats == ["Female", "Male"]
    assert fingerprint(lambda t: t.loc.__setitem__((0, "y"), 1 - t.loc[0, "y"])) == (cats, before)  # a label edit
    assert fingerprint(lambda t: t.loc.__setitem__((2, "split"), "train")) == (cats, before)  # split, same categories
    cats, after = fingerprint(lambda t: t.loc.__setitem__((3, "split"), "train"))  # "Other" becomes a category
    assert cats == ["Female", "Male", "Other"] and after != before


# -- 4. external cohorts need no split -------------------------------------------------------
@pytest.mark.parametrize("split", [{}, {"split_ratios": [0, 0, 1]}, {"split_column": "split", "val_from_train": 0.5}])
def test_external_dataset_takes_every_row_as_evaluation_data(tmp_path, split):
    manifest, _ = _cohort_dir(tmp_path, n=6)
    cfg = {k: v for k, v in _cfg(manifest, role="external").items() if k != "split_column"}
    cfg.update(split)
    cohort = load_manifest_dataset("ext", cfg, tmp_path)
    assert (cohort.frame["split"] == "test").all() and len(cohort.frame) == 6
    assert "all 6 rows are evaluation data" in cohort.extra["split"] and "ignored" in cohort.extra["split"]


def test_config_accepts_zero_ratios_for_external_only():
    cfg = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    cfg["datasets"]["demo_mimic_ext"]["split_ratios"] = [0, 0, 1]
    validate_config(cfg)
    cfg["datasets"]["demo_mimic"].pop("split_column")
    cfg["datasets"]["demo_mimic"]["split_ratios"] = [0, 0, 1]
    with pytest.raises(ConfigError, match="datasets.demo_mimic.split_ratios.*role: external"):
        validate_config(cfg)


def test_external_cohort_encodes_with_the_development_categories(tmp_path):
    dev_dir, ext_dir = tmp_path / "dev", tmp_path / "ext"
    dev_manifest, _ = _cohort_dir(dev_dir, n=6)
    ext_manifest, _ = _cohort_dir(ext_dir, n=3)
    table = pd.read_csv(ext_manifest)
    table.loc[0, "sex"] = "Other"
    table.to_csv(ext_manifest, index=False)
    dev = load_manifest_dataset("dev", _cfg(dev_manifest), dev_dir)
    write_cohort(dev, tmp_path / "dev.parquet")
    reference = read_cohort(tmp_path / "dev.parquet")  # as prepare_dataset reads it
    ext = adopt_reference(load_manifest_dataset("ext", _cfg(ext_manifest, role="external"), ext_dir),
                          reference.schemas, "dev")
    assert (ext.schemas["vitals"]["categorical"] == {"sex": ["Female", "Male"]}
            and ext.schemas["vitals"]["from"] == "dev")
    feats, _ = _extract(tmp_path, ext, "vitals", "tabular_raw")
    dev_feats, _ = _extract(tmp_path, dev, "vitals", "tabular_raw")
    assert feats.dim == dev_feats.dim == 6
    np.testing.assert_array_equal(feats.embeddings[0, 1:4], [0, 0, 1])  # "Other": zeros + unseen
    bad = _cfg(ext_manifest, role="external")
    bad["modalities"]["vitals"]["columns"] = ["sex", "age"]
    with pytest.raises(CohortError, match="columns \\['sex', 'age'\\].*'dev'"):
        adopt_reference(load_manifest_dataset("ext", bad, ext_dir), reference.schemas, "dev")
    assert json.loads(json.dumps(ext.schemas)) == ext.schemas  # JSON-ready for the view's metadata


def test_expected_widths_follow_the_datasets_schema():
    """Fit/evaluate refuse caches of another width: dataset-sized experts are checked per feature key."""
    from medmix.plan.config import with_expected_dims

    identities = {n: {"model_id": None, "revision": None, "preprocessing": create_extractor(n).settings.preprocessing}
                  for n in ("ts_summary", "tabular_raw")}
    schemas = {"ehr": {"variables": VARS48}, "vitals": {"columns": ["age", "sex"], "categorical": {"sex": ["F", "M"]}}}
    dims = with_expected_dims(identities, ["ehr/ts_summary", "vitals/tabular_raw"], schemas)
    assert dims["ts_summary"]["dim"] == 276 and dims["ehr/ts_summary"]["dim"] == 288
    assert dims["vitals/tabular_raw"]["dim"] == 1 + 3 + 2


@pytest.mark.parametrize("text", [
    "time,a,b\n0,1,2\n",
    "\ufefftime,a,\"b,c\"\n0,1,2\n",  # BOM, quoted comma
    "\ntime,a\n0,1\n",  # blank first line: pandas skips it
    "a,a,b\n1,2,3\n",  # duplicate names: pandas renames them
    "time,,b\n0,1,2\n",  # empty name
    " a , b\r\n1,2\r\n",
])
def test_series_header_reads_the_names_pandas_reads(tmp_path, text):
    """The fast header reader (used once per series file when the DAG is planned) agrees with pandas."""
    path = tmp_path / "s.csv"
    path.write_text(text, encoding="utf-8")
    expected = [c for c in pd.read_csv(path, nrows=0).columns if c.strip().lower() != "time"]
    assert series_header(path) == expected
    (tmp_path / "empty.csv").write_text("")
    assert series_header(tmp_path / "empty.csv") is None
