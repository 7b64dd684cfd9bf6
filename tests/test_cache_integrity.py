"""Integrity of what is cached (issue 29 item 3): checksums verified on every read, damaged files
rebuilt, and the opt-in content comparison of input files (``inputs_check: content``).

Feature files, cohort tables, input views and prediction files carry a sha256 of their values and
metadata (medmix/store/checksum.py). A byte changed in place (size and mtime kept) or a truncated
file is reported naming the file, the file is moved to ``<name>.corrupt``, and the next snakemake
run rebuilds it. The end-to-end test runs the real workflow on a tiny demo (``slow``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from config_helpers import default_config
from workflow_helpers import job_counts, snakemake

from medmix.cohort import Cohort, CohortError, read_cohort, read_cohort_schemas, write_cohort
from medmix.evaluation.tables import load_runs
from medmix.store import (
    CorruptFileError,
    FeatureStoreError,
    read_features,
    read_metadata,
    read_predictions,
    write_features,
    write_predictions,
)
from medmix.store.checksum import (
    CHECKSUM_KEY,
    MARKER_KEY,
    quarantine,
    read_table,
    table_checksum,
    write_table,
)
from medmix.store.inputs import InputView, input_fingerprint, read_input_view, write_input_view

REBUILT = "the next snakemake run rebuilds it"  # medmix.store.checksum.REBUILT


# ------------------------------------------------------------------------------------ helpers
def _keep_stat(path: Path, change) -> None:
    """Apply ``change(bytearray) -> bytes`` to the file in place, keeping its size and mtime."""
    st = path.stat()
    raw = bytearray(path.read_bytes())
    new = change(raw)
    with open(path, "r+b") as fh:  # in place: same inode, as a disk or a stray write would do
        fh.write(new)
        fh.truncate(len(new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def flip_byte(path: Path, offset: int) -> None:
    def change(raw: bytearray) -> bytes:
        raw[offset] ^= 0x10
        return bytes(raw)

    before = path.stat()
    _keep_stat(path, change)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def truncate(path: Path, keep: float = 0.6) -> None:
    _keep_stat(path, lambda raw: bytes(raw[: int(len(raw) * keep)]))


def data_page_offset(path: Path, column: str) -> int:
    """A byte in the middle of the data (and dictionary) pages of ``column``'s first column chunk."""
    meta = pq.read_metadata(path).row_group(0)
    for i in range(meta.num_columns):
        chunk = meta.column(i)
        if chunk.path_in_schema.split(".")[0] == column:
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            return start + chunk.total_compressed_size // 2
    raise KeyError(column)


def assert_moved_aside(path: Path, err: Exception) -> None:
    text = str(err)
    assert str(path) in text and REBUILT in text, text
    assert not path.exists(), "the damaged file must be moved aside so that the next run rebuilds it"
    assert path.with_name(path.name + ".corrupt").is_file()


def _features(path: Path, n: int = 40, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    present = rng.random(n) > 0.2
    write_features(path, [f"s{i}" for i in range(n)], emb, present,
                   {"extractor": "x", "model_id": "m", "revision": "r", "preprocessing": {}, "input_fingerprint": "f"})
    return emb, present


def _cohort(n: int = 30) -> Cohort:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
        "split": (["train"] * (n // 2)) + (["val"] * (n // 4)) + (["test"] * (n - n // 2 - n // 4)),
        "label:a": rng.integers(0, 2, n).astype(float), "label:b": rng.integers(0, 2, n).astype(float),
        "input:img": [f"/data/img{i}.png" if i % 5 else None for i in range(n)],
        "input:note": [f"note number {i} " * 3 for i in range(n)],
    })
    return Cohort("toy", "multilabel", ["a", "b"], {"img": "image", "note": "text"}, frame,
                  schemas={"note": {}})


def _predictions(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame({
        "dataset": "toy", "method": "m", "train_protocol": "none", "cohort": "toy",
        "eval_set": ["val"] * (n // 2) + ["test"] * (n - n // 2), "test_protocol": "none", "seed": 0,
        "sample_id": [f"s{i}" for i in range(n)], "prob:a": rng.random(n), "label:a": rng.integers(0, 2, n) * 1.0,
        "present:img": rng.random(n) > 0.3,
    })


# ---------------------------------------------------------------------------- feature files
def test_feature_file_round_trip_carries_a_checksum(tmp_path):
    path = tmp_path / "f.parquet"
    emb, present = _features(path)
    meta = pq.read_schema(path).metadata
    record = json.loads(meta[CHECKSUM_KEY])
    assert set(record["columns"]) == {"sample_id", "present", "embedding"} and record["rows"] == 40
    assert meta[MARKER_KEY] == record["algorithm"].encode()
    ff = read_features(path)
    np.testing.assert_array_equal(ff.embeddings[present], emb[present])


def test_flipped_byte_in_a_feature_data_page_is_caught_and_the_file_moved_aside(tmp_path):
    path = tmp_path / "f.parquet"
    _features(path)
    assert read_metadata(path)["dim"] == 16  # the footer is intact: planning-time reads pass
    flip_byte(path, data_page_offset(path, "embedding"))
    with pytest.raises(FeatureStoreError, match="is corrupt") as err:
        read_features(path)
    assert_moved_aside(path, err.value)


def test_flipped_byte_in_the_feature_footer_is_caught_by_read_metadata(tmp_path):
    """The Arrow schema (with the medmix metadata) is in the footer, which page checksums do not cover."""
    path = tmp_path / "f.parquet"
    _features(path)
    raw = path.read_bytes()
    flip_byte(path, raw.index(b"ARROW:schema") + 200)  # inside the base64 Arrow schema
    with pytest.raises(FeatureStoreError, match="is corrupt") as err:
        read_metadata(path)
    assert_moved_aside(path, err.value)


@pytest.mark.parametrize("reader", [read_features, read_metadata], ids=["read_features", "read_metadata"])
def test_truncated_feature_file_is_moved_aside(tmp_path, reader):
    path = tmp_path / "f.parquet"
    _features(path)
    truncate(path)
    with pytest.raises(FeatureStoreError, match="is corrupt") as err:
        reader(path)
    assert_moved_aside(path, err.value)


def test_every_flipped_byte_is_caught_or_changes_nothing_read(tmp_path):
    """Byte by byte over a small feature file: a flip either fails the read (file moved aside) or
    leaves every value and the metadata as written (e.g. column statistics no read uses)."""
    path = tmp_path / "f.parquet"
    _features(path, n=12, dim=4)
    raw = path.read_bytes()
    ref = read_table(path)
    caught = 0
    for offset in range(0, len(raw), 3):
        damaged = tmp_path / "d.parquet"
        damaged.write_bytes(raw)
        flip_byte(damaged, offset)
        try:
            back = read_table(damaged, expect=b"medmix")
        except CorruptFileError:
            caught += 1
            assert not damaged.exists()
            continue
        assert back.to_pylist() == ref.to_pylist(), offset
        assert back.schema.metadata[b"medmix"] == ref.schema.metadata[b"medmix"], offset
    assert caught > len(raw) // 6  # most bytes matter


# ------------------------------------------------------------------------------ cohort files
def test_flipped_byte_in_a_cohort_data_page_is_caught(tmp_path):
    path = tmp_path / "cohort.parquet"
    write_cohort(_cohort(), path)
    assert read_cohort(path).frame.shape[0] == 30
    flip_byte(path, data_page_offset(path, "input:note"))
    with pytest.raises(CohortError, match="is corrupt") as err:
        read_cohort(path)
    assert_moved_aside(path, err.value)


@pytest.mark.parametrize("reader", [read_cohort, read_cohort_schemas], ids=["read_cohort", "read_cohort_schemas"])
def test_truncated_cohort_file_is_moved_aside(tmp_path, reader):
    path = tmp_path / "cohort.parquet"
    write_cohort(_cohort(), path)
    truncate(path)
    with pytest.raises(CohortError, match="is corrupt") as err:
        reader(path)
    assert_moved_aside(path, err.value)


def test_flipped_byte_in_an_input_view_is_caught(tmp_path):
    path = tmp_path / "inputs.parquet"
    write_input_view(path, _cohort().input_view())
    assert read_input_view(path, ["note"]).inputs("note")[0].startswith("note number 0")
    flip_byte(path, data_page_offset(path, "input:note"))
    with pytest.raises(CorruptFileError, match="is corrupt") as err:
        read_input_view(path, ["note"])
    assert_moved_aside(path, err.value)


# -------------------------------------------------------------------------- prediction files
def test_flipped_byte_in_a_prediction_file_is_caught_by_the_tables(tmp_path):
    path = tmp_path / "predictions" / "toy.parquet"
    write_predictions(_predictions(), path)
    pd.testing.assert_frame_equal(read_predictions(path), _predictions(), check_dtype=False)
    flip_byte(path, data_page_offset(path, "prob:a"))
    with pytest.raises(CorruptFileError, match="is corrupt") as err:
        load_runs([str(path)])  # the tables job's reader
    assert_moved_aside(path, err.value)


def test_truncated_prediction_file_is_moved_aside(tmp_path):
    path = tmp_path / "toy.parquet"
    write_predictions(_predictions(), path)
    truncate(path, keep=0.9)
    with pytest.raises(CorruptFileError, match="is corrupt") as err:
        read_predictions(path)
    assert_moved_aside(path, err.value)


# ---------------------------------------------------------------------------- the checksums
def test_files_without_a_checksum_are_read_unverified_but_a_lost_checksum_is_damage(tmp_path, caplog):
    legacy = tmp_path / "legacy.parquet"
    _predictions().to_parquet(legacy)  # written before checksums existed (or by pandas directly)
    with caplog.at_level(logging.WARNING, logger="medmix.store"):
        assert len(read_predictions(legacy)) == 60
    assert "read unverified" in caplog.text
    # a checksummed file whose checksum entry is gone (a flipped byte in its key) is not "legacy"
    path = tmp_path / "p.parquet"
    write_predictions(_predictions(), path)
    table = pq.read_table(path)
    meta = {k: v for k, v in table.schema.metadata.items() if k != CHECKSUM_KEY}
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(CorruptFileError, match="checksum entry is missing") as err:
        read_predictions(path)
    assert_moved_aside(path, err.value)


def test_checksum_ignores_chunking_and_string_width_but_not_values(tmp_path):
    table = pa.table({"s": pa.array(["a", None, "ccc", "dd"]), "x": pa.array([1.0, 2.0, None, 4.0])})
    rechunked = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    wide = table.cast(pa.schema([pa.field("s", pa.large_string()), pa.field("x", pa.float64())]))
    assert table_checksum(rechunked)["columns"] == table_checksum(table)["columns"] == table_checksum(wide)["columns"]
    changed = pa.table({"s": pa.array(["a", None, "ccc", "de"]), "x": table.column("x")})
    assert table_checksum(changed)["columns"]["s"] != table_checksum(table)["columns"]["s"]
    nulls_moved = pa.table({"s": table.column("s"), "x": pa.array([1.0, None, 2.0, 4.0])})
    assert table_checksum(nulls_moved)["columns"]["x"] != table_checksum(table)["columns"]["x"]


def test_a_file_rewritten_since_it_was_read_is_not_moved_aside(tmp_path):
    path = tmp_path / "f.parquet"
    _features(path)
    read = path.stat()
    _features(path, seed=1)  # its job wrote it again (atomically: a new inode) meanwhile
    assert "replaced since it was read" in quarantine(path, read)
    assert path.exists() and not (tmp_path / "f.parquet.corrupt").exists()


def test_a_failed_read_back_leaves_the_old_file_and_no_temp_file(tmp_path):
    """write_table is atomic (temp file in the same folder, fsync, verify, rename)."""
    path = tmp_path / "t.parquet"
    write_table(pa.table({"x": [1, 2]}), path)
    before = path.read_bytes()

    def refuse(back):
        raise OSError("refused")

    with pytest.raises(OSError, match="refused"):
        write_table(pa.table({"x": [3]}), path, check=refuse)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


# ------------------------------------------------------------------- inputs_check: content
def test_content_fingerprint_catches_a_swap_that_keeps_size_and_mtime(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"first image bytes")
    b.write_bytes(b"other image bytes")
    args = (["s1", "s2"], [str(a), str(b)], "image", None)
    stat_before, content_before = input_fingerprint(*args), input_fingerprint(*args, content=True)
    _keep_stat(a, lambda raw: b"FIRST image bytes")  # same size, mtime restored
    assert input_fingerprint(*args) == stat_before  # stat mode cannot see it (documented)
    assert input_fingerprint(*args, content=True) != content_before
    _keep_stat(a, lambda raw: b"first image bytes")
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))  # a touch alone
    assert input_fingerprint(*args) != stat_before
    assert input_fingerprint(*args, content=True) == content_before
    view = InputView("toy", ["s1", "s2"], {"img": "image"}, {"img": [str(a), str(b)]})
    assert view.fingerprint("img", content=True) == content_before


# -------------------------------------------------------------------------------- end to end
def tiny_config() -> dict:
    cfg = default_config()
    cfg["seeds"] = [0]
    cfg["methods"] = ["meanavg"]
    cfg["demo"]["cohorts"] = {"demo_openi": {"kind": "cxr", "n_patients": 20, "seed": 1}}
    ds = copy.deepcopy(cfg["datasets"]["demo_openi"])
    experts = {"frontal": "image_intensity_grid", "lateral": "image_intensity_grid", "note": "text_keywords"}
    for mod, spec in ds["modalities"].items():
        spec["committee"] = [{"name": experts[mod], "role": "general"}]
        spec["teacher"] = None
    cfg["datasets"] = {"demo_openi": ds}
    cfg["training"].update({"max_epochs": 2, "warmup_epochs": 1, "patience": 1})
    cfg["protocols"] = {"train": {"none": {"kind": "none"}}, "test": {"none": {"kind": "none"}}}
    cfg["inputs_check"] = "content"
    return cfg


FIT = "results/demo_openi/runs/meanavg/none/fit.json"
TARGETS = (FIT, "features")  # a fitted run and every feature file
NOTE = Path("results/demo_openi/features/note/text_keywords.parquet")
FRONTAL = Path("results/demo_openi/features/frontal/image_intensity_grid.parquet")


def planned(workdir: Path) -> dict[str, int]:
    """Jobs a dry run of TARGETS plans, by rule (as test_workflow.planned_jobs does for `all`)."""
    out = snakemake(workdir, "-n", "--cores", "2", *TARGETS)
    return job_counts(out.stdout + out.stderr)


def extracted(proc) -> list[str]:
    """``modality/expert`` of every extraction a snakemake run ran."""
    text = proc.stdout + proc.stderr
    return sorted({line.split("modality=")[1].replace(", expert=", "/").strip()
                   for line in text.splitlines() if "wildcards: dataset=" in line and "modality=" in line})


@pytest.mark.slow
def test_corrupted_feature_file_is_reported_then_rebuilt_by_the_workflow(tmp_path):
    cfg = tiny_config()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--cores", "2", *TARGETS, timeout=600)
    note, frontal = tmp_path / NOTE, tmp_path / FRONTAL

    # 1. A byte of the embeddings changed in place, size and mtime kept: nothing looks changed to
    # Snakemake; the first job that reads the file (here a forced refit) reports it, naming the
    # file, and moves it aside.
    flip_byte(note, data_page_offset(note, "embedding"))
    proc = snakemake(tmp_path, "--cores", "2", "--forcerun", "fit", FIT, check=False, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{NOTE} is corrupt" in text and REBUILT in text, text[-3000:]
    assert not note.exists() and note.with_name(note.name + ".corrupt").exists()
    # ... and the next run rebuilds it (its extraction reruns, no other) and finishes.
    proc = snakemake(tmp_path, "--cores", "2", *TARGETS, timeout=600)
    assert extracted(proc) == ["note/text_keywords"]
    assert read_features(note).sample_ids and planned(tmp_path) == {}

    # 2. A truncated feature file is caught as soon as the workflow plans (it reads every feature
    # file's footer for the input fingerprints): reported, moved aside, rebuilt by the next run.
    truncate(frontal)
    proc = snakemake(tmp_path, "--cores", "2", *TARGETS, timeout=600)
    text = proc.stdout + proc.stderr
    assert f"{FRONTAL} is corrupt" in text and REBUILT in text, text[-3000:]
    assert not frontal.exists()
    proc = snakemake(tmp_path, "--cores", "2", *TARGETS, timeout=600)
    assert extracted(proc) == ["frontal/image_intensity_grid"]
    assert read_features(frontal).sample_ids and planned(tmp_path) == {}

    # 3. inputs_check: content: an input image swapped for other bytes of the same size, its mtime
    # restored, reruns the extraction that read it (and only that); restoring it reruns nothing.
    image = sorted((tmp_path / "resources/demo/demo_openi/images").glob("*_frontal.png"))[0]
    original = image.read_bytes()
    flip_byte(image, len(original) // 2)
    jobs = planned(tmp_path)
    assert jobs.get("extract") == 1 and "prepare_dataset" not in jobs, jobs
    _keep_stat(image, lambda raw: original)
    assert planned(tmp_path) == {}
