"""An expert job fails loudly instead of recording a whole modality, or a crash, as missing data.

- Too many unusable inputs (more than ``max_failed_fraction`` of those present in the cohort) fail
  the job with one :class:`ExtractionFailedError` and write no feature file; fewer are recorded as
  absent as before.
- Out of memory, CUDA errors and interrupts are never "bad input": they fail the job, from
  ``prepare`` (also in DataLoader workers) and from ``embed_batch``, and nothing is written.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extractors.base import ExtractionFailedError, Extractor, InputError, is_fatal
from extractors.registry import ExpertSpec, create_extractor
from extractors.runner import run_extraction
from medmix.store import read_features


def _series(folder: Path, name: str, n_variables: int, steps: int = 12) -> str:
    rng = np.random.default_rng(len(name) + n_variables)
    frame = pd.DataFrame(rng.normal(size=(steps, n_variables)), columns=[f"v{j}" for j in range(n_variables)])
    frame.insert(0, "hour", np.arange(steps))
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return str(path)


# -- too many unusable inputs -------------------------------------------------------------
def test_a_48_variable_cohort_fails_the_46_variable_expert_and_writes_nothing(tmp_path: Path) -> None:
    ids = ["icu-001", "icu-002", "icu-003", "icu-004"]
    values = [_series(tmp_path, sid, 48) for sid in ids]
    out = tmp_path / "ts_summary.parquet"
    ex = create_extractor("ts_summary")
    assert ex.settings.preprocessing["n_variables"] == 46
    with pytest.raises(ExtractionFailedError) as info:
        run_extraction(ex, ids, values, str(out), extra_metadata={"dataset": "icu48", "modality": "ehr"})
    msg = str(info.value)
    assert "ts_summary" in msg and "icu48" in msg and "'ehr'" in msg
    assert "4 of 4" in msg
    assert "has 48 variables; this expert expects 46" in msg  # the commonest reason, with its numbers
    assert "icu-001" in msg and "max_failed_fraction" in msg and "config.yaml" in msg
    assert not out.exists()
    assert list(tmp_path.glob("*.parquet")) == []  # no partial / temporary file either


def test_one_bad_of_four_present_inputs_is_recorded_absent(tmp_path: Path) -> None:
    """Behaviour below the threshold is unchanged; samples missing in the cohort are not failures
    (counted as such, 4 of 7 would exceed the default 0.5)."""
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    values = [_series(tmp_path, "a", 46), _series(tmp_path, "b", 46), _series(tmp_path, "c", 48),
              _series(tmp_path, "d", 46), None, None, float("nan")]  # e, f, g: modality missing in the cohort
    out = tmp_path / "o.parquet"
    summary = run_extraction(create_extractor("ts_summary"), ids, values, str(out))
    feats = read_features(out)
    assert feats.present.tolist() == [True, True, False, True, False, False, False]
    assert summary["failed"] == 1 and summary["missing"] == 3 and summary["present"] == 3
    assert any("variables" in reason for reason in feats.metadata["failed_reasons"])


@pytest.mark.parametrize(("n_bad", "fraction", "fails"), [
    (2, 0.5, False),  # exactly the fraction: still allowed ("more than" fails)
    (3, 0.5, True),
    (3, 0.75, False),
    (1, 0.0, True),  # 0: any failure fails the job
    (4, 1.0, False),  # 1: never fails for bad input
])
def test_threshold_counts_only_inputs_present_in_the_cohort(tmp_path: Path, n_bad, fraction, fails) -> None:
    """4 present inputs (``n_bad`` of them unusable) and 6 missing in the cohort."""
    values = [_series(tmp_path, f"s{k}", 48 if k < n_bad else 46) for k in range(4)] + [None] * 6
    ids = [f"s{k}" for k in range(10)]
    out = tmp_path / "o.parquet"
    ex = create_extractor("ts_summary")
    if fails:
        with pytest.raises(ExtractionFailedError, match=f"{n_bad} of 4 inputs present"):
            run_extraction(ex, ids, values, str(out), max_failed_fraction=fraction)
        assert not out.exists()
    else:
        summary = run_extraction(ex, ids, values, str(out), max_failed_fraction=fraction)
        assert summary["failed"] == n_bad and summary["missing"] == 6
        assert read_features(out).present.tolist() == [False] * n_bad + [True] * (4 - n_bad) + [False] * 6


def test_extract_job_passes_max_failed_fraction(tmp_path: Path) -> None:
    """``extraction.max_failed_fraction`` reaches the runner through the rule's job body."""
    from extractors.job import extract_job
    from medmix.plan.config import validate_schema
    from medmix.store.inputs import InputView, write_input_view

    cfg = validate_schema({"datasets": {"d": {"adapter": "manifest", "task": "binary", "labels": ["y"]}},
                           "experts": {"profile": "p", "profiles": {"p": {}}}})
    assert cfg["extraction"]["max_failed_fraction"] == 0.5
    cohort = tmp_path / "inputs.parquet"
    values = [str(_series(tmp_path, "a", 48)), str(_series(tmp_path, "b", 48))]
    write_input_view(cohort, InputView("icu48", ["a", "b"], {"ehr": "timeseries"}, {"ehr": values}))
    kwargs = {"identity": {"preprocessing": {}}, "runtime": {}}
    out = tmp_path / "o.parquet"
    with pytest.raises(ExtractionFailedError, match=r"dataset 'icu48', modality 'ehr'.*2 of 2"):
        extract_job(str(cohort), "ehr", "ts_summary", str(out), **kwargs)
    assert not out.exists()
    extract_job(str(cohort), "ehr", "ts_summary", str(out), **kwargs, max_failed_fraction=1.0)
    assert read_features(out).present.tolist() == [False, False]


# -- out of memory, CUDA, interrupts -------------------------------------------------------
class _Exploding(Extractor):
    """Test double: embeds numbers; the value "boom" raises ``error`` in ``prepare`` or ``embed_batch``."""

    spec = ExpertSpec(name="exploding_test_double", kinds=("tabular",), role="general", dim=2)
    error: BaseException = MemoryError("cannot allocate")
    where = "prepare"

    def prepare(self, value):
        if value == "boom" and self.where == "prepare":
            raise self.error
        return value

    def embed_batch(self, batch):
        if "boom" in batch and self.where == "embed":
            raise self.error
        return np.array([[len(v), 1.0] for v in batch], np.float32)


def _exploding(where: str, error: BaseException, num_workers: int) -> _Exploding:
    ex = _Exploding({"batch_size": 2, "num_workers": num_workers})
    ex.where, ex.error = where, error
    return ex


#: One bad sample of four: far below max_failed_fraction, so only its kind of error can fail the job.
IDS, VALUES = ["s0", "s1", "s2", "s3"], ["one", "two", "boom", "four"]


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("where", ["prepare", "embed"])
def test_memory_error_fails_the_job(tmp_path: Path, where: str, num_workers: int) -> None:
    if num_workers:
        pytest.importorskip("torch")
    out = tmp_path / "o.parquet"
    with pytest.raises(MemoryError):
        run_extraction(_exploding(where, MemoryError("cannot allocate"), num_workers), IDS, VALUES, str(out))
    assert not out.exists()


def _cuda_errors() -> list[BaseException]:
    errors: list[BaseException] = [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
        RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                     "tried to allocate 8 bytes"),
        InputError("unreadable volume x.npz: MemoryError"),  # an expert's wrapper around an OOM (cause set below)
    ]
    errors[-1].__cause__ = MemoryError()
    torch = pytest.importorskip("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    errors.append(oom("CUDA out of memory. Tried to allocate 2.00 GiB"))
    return errors


@pytest.mark.parametrize("where", ["prepare", "embed"])
def test_cuda_and_oom_errors_fail_the_job(tmp_path: Path, where: str) -> None:
    for k, error in enumerate(_cuda_errors()):
        out = tmp_path / f"o{k}.parquet"
        with pytest.raises(type(error)):
            run_extraction(_exploding(where, error, 0), IDS, VALUES, str(out))
        assert not out.exists(), error


@pytest.mark.parametrize("num_workers", [0, 1])
def test_exit_in_prepare_fails_the_job(tmp_path: Path, num_workers: int) -> None:
    out = tmp_path / "o.parquet"
    if num_workers:
        pytest.importorskip("torch")
        from extractors.runner import WorkerAbortError

        expected: type[BaseException] = WorkerAbortError  # sent back by the worker, re-raised here
    else:
        expected = SystemExit
    with pytest.raises(expected, match="SystemExit" if num_workers else None):
        run_extraction(_exploding("prepare", SystemExit(3), num_workers), IDS, VALUES, str(out))
    assert not out.exists()


def test_ordinary_errors_still_make_one_sample_absent(tmp_path: Path) -> None:
    for where in ("prepare", "embed"):
        out = tmp_path / f"{where}.parquet"
        summary = run_extraction(_exploding(where, RuntimeError("odd value in /data/barracuda/x"), 1), IDS, VALUES,
                                 str(out))
        assert read_features(out).present.tolist() == [True, True, False, True]
        assert summary["failed"] == 1


@pytest.mark.parametrize(("error", "fatal"), [
    (MemoryError(), True),
    (KeyboardInterrupt(), True),
    (SystemExit(1), True),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes"), True),
    (InputError("time series x.csv has 48 variables; this expert expects 46"), False),
    (ValueError("bad value"), False),
    (KeyError("x"), False),
    (OSError(errno.ENOENT, "No such file"), False),
    (RuntimeError("unreadable file /data/barracuda/scan.dcm"), False),  # "cuda" inside a word
    (RecursionError("maximum recursion depth exceeded"), False),
])
def test_is_fatal(error: BaseException, fatal: bool) -> None:
    assert is_fatal(error) is fatal


def test_input_readers_do_not_turn_out_of_memory_into_bad_input(tmp_path: Path, monkeypatch) -> None:
    """The experts' own broad excepts (unreadable file -> InputError) let out-of-memory through."""
    from extractors import inputs

    series, volume = _series(tmp_path, "s", 46), tmp_path / "v.npy"
    np.save(volume, np.zeros((2, 3, 4), np.float32))

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(pd, "read_csv", out_of_memory)
    monkeypatch.setattr(np, "load", out_of_memory)
    with pytest.raises(MemoryError):
        inputs.read_timeseries(series)
    with pytest.raises(MemoryError):
        inputs.read_volume(str(volume))
