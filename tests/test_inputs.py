"""Input readers and the runner's handling of bad input: absent with a reason, never a crash."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from extractors.base import Extractor, InputError
from extractors.inputs import read_image, read_tabular, read_text, read_timeseries, read_volume
from extractors.registry import ExpertSpec, create_extractor
from extractors.runner import run_extraction
from medmix.store import read_features


def _run(name: str, values: list, out: Path, **settings):
    """Mostly-bad inputs on purpose: these tests are about per-sample isolation, so the job-level
    limit (``max_failed_fraction``, see test_extraction_failures.py) is lifted."""
    summary = run_extraction(create_extractor(name, settings), [f"s{k}" for k in range(len(values))], values, str(out),
                             max_failed_fraction=1.0)
    return read_features(out), summary


def _good_image(folder: Path) -> str:
    path = folder / "good.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_unreadable_and_truncated_images_are_absent(tmp_path: Path, caplog) -> None:
    good = _good_image(tmp_path)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a PNG at all")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good).read_bytes()[:300])
    values = [good, str(garbage), str(truncated), str(tmp_path / "absent.png"), None, good]
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        feats, summary = _run("image_texture", values, tmp_path / "o.parquet")
    assert feats.present.tolist() == [True, False, False, False, False, True]
    assert feats.sample_ids == [f"s{k}" for k in range(6)]  # nobody dropped
    assert summary["failed"] == 3 and summary["missing"] == 1
    assert "garbage.png" in caplog.text and "truncated.png" in caplog.text and "absent.png" in caplog.text
    assert sum(feats.metadata["failed_reasons"].values()) == 3


def test_truncated_nifti_is_absent(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "ct" / "example_ct_sm.nii.gz"
    full = gzip.decompress(src.read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(full[: len(full) // 2]))  # a valid header, half the voxels
    torn = tmp_path / "torn.nii.gz"
    torn.write_bytes(src.read_bytes()[: src.stat().st_size // 2])  # a broken gzip stream
    assert nib.load(str(cut)).shape == (122, 101, 30)  # the header alone still reads
    for path in (cut, torn):
        with pytest.raises(InputError, match="unreadable volume"):
            read_volume(str(path))
    feats, summary = _run("ct_intensity_profile", [str(src), str(cut), str(torn)], tmp_path / "o.parquet")
    assert feats.present.tolist() == [True, False, False] and summary["failed"] == 2


def test_oversized_nifti_is_refused_from_its_header(tmp_path: Path, monkeypatch) -> None:
    import extractors.inputs as inputs

    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.int16), np.eye(4)), str(path))
    monkeypatch.setattr(inputs, "MAX_VOLUME_BYTES", 1024)
    with pytest.raises(InputError, match="GiB"):
        read_volume(str(path))


def test_empty_notes_are_absent(tmp_path: Path) -> None:
    for bad in ("", "   \n\t", float("nan"), 42):
        with pytest.raises(InputError):
            read_text(bad)
    feats, summary = _run("text_keywords", ["real note", "", "  ", float("nan"), "!!! ..."], tmp_path / "o.parquet")
    # NaN is a pandas null = missing in the cohort; "!!! ..." has no word tokens.
    assert feats.present.tolist() == [True, False, False, False, False]
    assert summary["missing"] == 1 and summary["failed"] == 3
    assert summary["failed_reasons"] == {"empty note": 2, "text has no word tokens": 1}


def test_all_nan_and_unparsable_time_series_are_absent(tmp_path: Path) -> None:
    cols = [f"v{j}" for j in range(46)]
    good = pd.DataFrame(np.random.default_rng(1).normal(size=(10, 46)), columns=cols)
    good.to_csv(tmp_path / "good.csv", index=False)
    nan = pd.DataFrame(np.nan, index=range(10), columns=cols).assign(hour=range(10))
    nan.to_csv(tmp_path / "nan.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    pd.DataFrame(columns=cols).to_csv(tmp_path / "header_only.csv", index=False)
    for name in ("nan.csv", "empty.csv", "header_only.csv"):
        with pytest.raises(InputError, match=name):
            read_timeseries(str(tmp_path / name))
    values = [str(tmp_path / n) for n in ("good.csv", "nan.csv", "empty.csv", "header_only.csv")]
    for expert in ("ts_summary", "ts_minirocket"):
        feats, summary = _run(expert, values, tmp_path / f"{expert}.parquet")
        assert feats.present.tolist() == [True, False, False, False] and summary["failed"] == 3


def test_volume_shallower_than_min_depth_and_wrong_shapes_are_absent(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    np.save(tmp_path / "deep.npy", rng.normal(0, 200, (12, 32, 32)).astype(np.float32))
    np.save(tmp_path / "shallow.npy", rng.normal(0, 200, (3, 32, 32)).astype(np.float32))
    np.save(tmp_path / "flat.npy", rng.normal(0, 200, (32, 32)).astype(np.float32))
    np.save(tmp_path / "four.npy", rng.normal(0, 200, (2, 3, 32, 32)).astype(np.float32))
    np.save(tmp_path / "nan.npy", np.full((4, 8, 8), np.nan, np.float32))
    np.save(tmp_path / "text.npy", np.array([["a"] * 4] * 4))
    values = [str(tmp_path / f"{n}.npy") for n in ("deep", "shallow", "flat", "four", "nan", "text")]
    for expert in ("ct_texture25d", "ct_intensity_profile"):
        feats, summary = _run(expert, values, tmp_path / f"{expert}.parquet", preprocessing={"min_depth": 5})
        assert feats.present.tolist() == [True] + [False] * 5, expert
        reasons = " | ".join(summary["failed_reasons"])
        assert "needs at least #" in reasons and "expected # dimensions" in reasons and "no finite voxels" in reasons
    # Default minimum is one slice: the shallow volume is then usable.
    feats, _ = _run("ct_texture25d", values[:2], tmp_path / "default.parquet")
    assert feats.present.tolist() == [True, True]


def test_tabular_reader_parses_json_and_refuses_junk() -> None:
    np.testing.assert_array_equal(read_tabular("[1, null, 2.5]"), np.array([1, np.nan, 2.5], np.float32))
    for bad in ("[1, 2", '["a", 1]', "{}", "[null, null]", "[]"):
        with pytest.raises(InputError):
            read_tabular(bad)


def test_dataloader_workers_give_the_same_file(tmp_path: Path) -> None:
    good = _good_image(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"nope")
    values = [good, str(tmp_path / "bad.png"), None] * 5
    serial, s_sum = _run("image_intensity_grid", values, tmp_path / "serial.parquet", num_workers=0, batch_size=2)
    workers, w_sum = _run("image_intensity_grid", values, tmp_path / "workers.parquet", num_workers=2, batch_size=2)
    np.testing.assert_array_equal(serial.embeddings, workers.embeddings)
    np.testing.assert_array_equal(serial.present, workers.present)
    assert (s_sum["present"], s_sum["failed"], s_sum["missing"]) == (5, 5, 5) == (
        w_sum["present"], w_sum["failed"], w_sum["missing"])


class _Fragile(Extractor):
    """Test double: embeds numbers, but a batch containing 13 (or a NaN) breaks or misbehaves."""

    spec = ExpertSpec(name="fragile_test_double", kinds=("tabular",), role="general", dim=2)

    def prepare(self, value):
        if value == "boom":
            raise KeyError("a bug in prepare")
        return float(value)

    def embed_batch(self, batch):
        if 13.0 in batch:
            raise ValueError("cannot embed 13")
        return np.array([[v, v * 2] for v in batch], np.float32)


def test_a_failing_batch_loses_only_its_offending_sample(tmp_path: Path) -> None:
    values = ["1", "2", "13", "4", "nan", "boom", "7"]
    summary = run_extraction(_Fragile({"batch_size": 4}), [f"s{k}" for k in range(7)], values,
                             str(tmp_path / "o.parquet"))
    feats = read_features(tmp_path / "o.parquet")
    assert feats.present.tolist() == [True, True, False, True, False, False, True]
    np.testing.assert_array_equal(feats.embeddings[6], [7, 14])
    reasons = summary["failed_reasons"]
    assert any("cannot embed #" in r for r in reasons) and any("non-finite" in r for r in reasons)
    assert any(r.startswith("unexpected KeyError in prepare") for r in reasons)


def test_every_input_failing_unexpectedly_is_a_bug_not_bad_input(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="every input failed"):
        run_extraction(_Fragile({}), ["a", "b"], ["boom", "boom"], str(tmp_path / "o.parquet"))
    assert not (tmp_path / "o.parquet").exists()


def test_wrong_output_shape_raises_and_writes_nothing(tmp_path: Path) -> None:
    class Wrong(_Fragile):
        def embed_batch(self, batch):
            return np.zeros((len(batch), 3), np.float32)

    with pytest.raises(RuntimeError, match="returned shape"):
        run_extraction(Wrong({}), ["a"], ["1"], str(tmp_path / "o.parquet"))
    assert not (tmp_path / "o.parquet").exists()


# --------------------------------------------------------------------------- real-world file quirks (issue 29)
def _exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)


def test_exif_orientation_is_applied_before_conversion(tmp_path: Path) -> None:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90° clockwise to display") decodes to
    the upright picture: exactly the stored pixels turned 90° clockwise, in every mode."""
    rng = np.random.default_rng(3)
    stored = (rng.random((24, 40, 3)) * 255).astype(np.uint8)  # 40 wide, 24 high as stored
    path = tmp_path / "sideways.jpg"
    _exif_jpeg(path, stored, 6)
    with Image.open(path) as raw:
        decoded = {mode: np.asarray(raw.convert(mode)) for mode in ("RGB", "L")}  # no orientation applied
    for mode in ("RGB", "L"):
        got = read_image(str(path), mode=mode)
        assert got.size == (24, 40)  # width x height: upright
        np.testing.assert_array_equal(np.asarray(got), np.rot90(decoded[mode], k=-1))
    # JPEG draft decoding asks for the stored (swapped) size, so the upright result is not below draft_size
    big = tmp_path / "big.jpg"
    _exif_jpeg(big, np.repeat(np.repeat(stored, 8, axis=0), 8, axis=1), 6)  # 320 wide x 192 high as stored
    assert read_image(str(big), mode="L", draft_size=(96, 160)).size == (96, 160)
    plain = tmp_path / "plain.jpg"
    _exif_jpeg(plain, stored, 1)
    assert read_image(str(plain)).size == (40, 24)


def test_series_values_that_are_not_numbers_make_the_sample_missing(tmp_path: Path) -> None:
    """A decimal comma (``1,5`` quoted in a CSV) is not a number: the series is refused, naming the file,
    the column and the first row, instead of a variable silently all-NaN. Empty cells stay unobserved."""
    path = tmp_path / "comma.csv"
    path.write_text('time,hr,sbp\n0,80,"120,5"\n1,,"121,0"\n2,82,\n')
    with pytest.raises(InputError) as err:
        read_timeseries(str(path))
    assert str(err.value) == (f"time series {path}: column 'sbp' has 2 value(s) that are not numbers, first at data "
                              "row 1 ('120,5'); write numbers with a '.' decimal point and leave "
                              "unobserved values empty")
    ok = tmp_path / "ok.csv"
    ok.write_text("time,hr,sbp\n1,81, \n0,80,NA\n2,,122.5\n")  # blank, NA and empty cells: unobserved
    frame = read_timeseries(str(ok))
    assert frame["hr"].tolist()[:2] == [80, 81] and frame["sbp"].isna().tolist() == [True, True, False]
    feats, _ = _run("ts_summary", [str(path), str(ok)], tmp_path / "o.parquet", preprocessing={"n_variables": 2})
    assert feats.present.tolist() == [False, True]
    assert feats.metadata["failed_samples"] == {"s0": str(err.value)}


def test_directory_and_symlink_loop_get_their_own_reason(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    os.symlink("loop.csv", tmp_path / "loop.csv")
    os.symlink("loop.nii.gz", tmp_path / "loop.nii.gz")
    cases = [
        (read_image, "folder.png", "image path {} is a directory, not a file"),
        (read_timeseries, "folder.png", "time-series path {} is a directory, not a file"),
        (read_timeseries, "loop.csv", "time-series path {} is a symlink loop (too many levels of symbolic links)"),
        (read_image, "loop.csv", "image path {} is a symlink loop (too many levels of symbolic links)"),
        (read_volume, "loop.nii.gz", "volume path {} is a symlink loop (too many levels of symbolic links)"),
        (read_image, "absent.png", "image file not found: {}"),
    ]
    for reader, name, reason in cases:
        with pytest.raises(InputError) as err:
            reader(str(tmp_path / name))
        assert str(err.value) == reason.format(tmp_path / name)
