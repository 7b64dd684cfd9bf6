"""Time-series foundation-model experts: Chronos on a tiny random-weight T5, MOIRAI's packing and I/O.

Chronos runs end to end (tiny ``T5ForConditionalGeneration`` with Chronos's real tokenizer config,
loaded by ``ChronosPipeline``). MOIRAI runs end to end too: uni2ts pins torch<2.5 and cannot be
installed in the main environment, so the ``moirai_env`` fixture installs uni2ts 2.0.0 and the few
packages its encoder imports (``moirai_test_requirements.txt``, ``--no-deps``, offline from a
wheelhouse that CI builds before the tests, into the pytest cache) as the worker's separate
environment, and the real ``extractors/moirai_worker.py`` runs there as a subprocess, exactly as
the ``moirai_embed`` rule runs it in ``workflow/envs/moirai.yaml`` (but beside this environment's
torch). Without the wheelhouse those tests skip, saying how to build it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny_models import build_chronos

from extractors import moirai_worker
from extractors.base import ModelUnavailableError
from extractors.experts.moirai import export_series, write_worker_features
from extractors.registry import create_extractor
from extractors.runner import run_extraction
from medmix.store import read_features


def _series(folder: Path, lengths=(48, 30, 12), n_var: int = 46) -> list[str]:
    rng = np.random.default_rng(2)
    paths = []
    for k, t in enumerate(lengths):
        frame = pd.DataFrame(rng.normal(50, 10, size=(t, n_var)), columns=[f"v{j}" for j in range(n_var)])
        frame.iloc[rng.random(frame.shape) < 0.3] = np.nan
        frame.iloc[:, min(5, n_var - 1)] = np.nan  # a variable never measured for this patient
        frame.insert(0, "hour", np.arange(t))
        path = folder / f"ts{k}.csv"
        frame.to_csv(path, index=False)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def chronos_dir(tmp_path_factory) -> Path:
    return build_chronos(tmp_path_factory.mktemp("chronos"))


def test_chronos_end_to_end(chronos_dir: Path, tmp_path: Path) -> None:
    from chronos import ChronosPipeline

    paths = _series(tmp_path)
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"hour": [0, 1], "v0": [np.nan, np.nan]}).to_csv(empty, index=False)
    values = [*paths, None, str(empty)]
    ids = [f"s{k}" for k in range(len(values))]
    ext = create_extractor("chronos_small", {"local_dir": str(chronos_dir), "batch_size": 3})
    summary = run_extraction(ext, ids, values, str(tmp_path / "a.parquet"))
    ff = read_features(tmp_path / "a.parquet")
    assert ff.embeddings.shape == (5, 512) and ff.embeddings.dtype == np.float32
    assert ff.present.tolist() == [True, True, True, False, False] and summary["failed"] == 1

    # Independent recomputation with the documented ChronosPipeline.embed API, one variable at a time:
    # mean over observed steps (EOS excluded), then mean over the variables with an observation.
    pipe = ChronosPipeline.from_pretrained(chronos_dir)
    frame = pd.read_csv(paths[1]).drop(columns="hour")
    per_var = []
    for col in frame.columns:
        series = torch.tensor(frame[col].to_numpy(), dtype=torch.float32)
        observed = ~torch.isnan(series)
        if not observed.any():
            continue
        states, _ = pipe.embed(series)
        assert states.shape[1] == len(series) + 1  # + EOS
        per_var.append(states[0, :-1][observed].mean(0).numpy())
    assert len(per_var) == 45  # the never-measured variable is left out
    np.testing.assert_allclose(ff.embeddings[1], np.mean(per_var, axis=0), atol=2e-5, rtol=1e-4)

    # Different lengths batched together (NaN left padding) == each alone; deterministic.
    ext1 = create_extractor("chronos_small", {"local_dir": str(chronos_dir), "batch_size": 1})
    run_extraction(ext1, ids, values, str(tmp_path / "b.parquet"))
    np.testing.assert_allclose(read_features(tmp_path / "b.parquet").embeddings, ff.embeddings, atol=1e-5, rtol=0)


def test_chronos_large_width_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="amazon/chronos-t5-large"):
        create_extractor("chronos_large").load()
    folder = build_chronos(tmp_path / "large", d_model=1024)
    ext = create_extractor("chronos_large", {"local_dir": str(folder)})
    emb = ext.embed_batch([ext.prepare(p) for p in _series(tmp_path, lengths=(20,), n_var=3)])
    assert emb.shape == (1, 1024) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match="d_model"):
        create_extractor("chronos_small", {"local_dir": str(folder)}).load()


# -- MOIRAI ------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "extractors" / "moirai_worker.py"
ENV_TOOLS = Path(__file__).with_name("moirai_env_tools.py")
#: uni2ts and the few packages its encoder imports, pinned (installed --no-deps beside this torch/numpy).
MOIRAI_REQUIREMENTS = Path(__file__).with_name("moirai_test_requirements.txt")
#: Where the wheels of MOIRAI_REQUIREMENTS lie (CI builds it before the tests; see .ci/run).
MOIRAI_WHEELHOUSE = Path(os.environ.get("MEDMIX_MOIRAI_WHEELHOUSE", REPO / ".wheelhouse" / "moirai"))
# uni2ts/model/moirai/__init__.py also imports MoiraiForecast/Finetune/Pretrain (lightning, gluonts);
# in the test environment it exports MoiraiModule only. module.py and everything it uses are untouched.
MOIRAI_INIT = "from .module import MoiraiModule\n\n__all__ = [\"MoiraiModule\"]\n"


@pytest.fixture(scope="session")
def moirai_env(request) -> dict[str, str]:
    """Environment variables of a subprocess that runs in the MOIRAI test environment.

    Built offline from the wheelhouse (``MEDMIX_MOIRAI_WHEELHOUSE``, default ``.wheelhouse/moirai``)
    that CI prepares before the tests; skipped, saying how to build it, when there is none.
    """
    requirements = MOIRAI_REQUIREMENTS.read_text()
    key = hashlib.sha256((requirements + MOIRAI_INIT).encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    name = f"moirai-env-{key}"
    target = Path(cache.mkdir(name)) if cache is not None else request.getfixturevalue("tmp_path_factory").mktemp(name)
    ready = target / ".ready"
    if not ready.exists():
        if not any(MOIRAI_WHEELHOUSE.glob("uni2ts-*.whl")):
            pytest.skip(f"no MOIRAI test wheelhouse at {MOIRAI_WHEELHOUSE}: build it with `pip wheel --no-deps -w "
                        f"{MOIRAI_WHEELHOUSE} -r {MOIRAI_REQUIREMENTS.relative_to(REPO)}` (.ci/run does)")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(MOIRAI_WHEELHOUSE),
             "--no-deps", "--upgrade", "--target", str(target), "-r", str(MOIRAI_REQUIREMENTS)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            pytest.fail(f"installing the MOIRAI test environment from {MOIRAI_WHEELHOUSE} into {target} failed:\n"
                        f"{proc.stderr[-3000:]}")
        (target / "uni2ts" / "model" / "moirai" / "__init__.py").write_text(MOIRAI_INIT)
        ready.write_text(requirements)
    return {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _in_moirai_env(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def moirai_dirs(moirai_env, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny random-weight MOIRAI checkpoints (seeds 0 and 1) in uni2ts's save format."""
    folder = tmp_path_factory.mktemp("moirai")
    for seed in (0, 1):
        _in_moirai_env(moirai_env, str(ENV_TOOLS), "build", str(folder / f"seed{seed}"), "--seed", str(seed))
    return folder / "seed0", folder / "seed1"


def _worker(env: dict[str, str], model: Path, series: Path, out: Path, batch_size: int) -> np.ndarray:
    ext = create_extractor("moirai", {"local_dir": str(model), "batch_size": batch_size, "device": "cpu"})
    _in_moirai_env(env, str(WORKER), "--input", str(series), "--output", str(out), *ext.worker_args())
    with np.load(out) as data:
        return np.asarray(data["embeddings"])


def test_moirai_end_to_end_random_weights(moirai_env, moirai_dirs, tmp_path: Path) -> None:
    """export (main env) -> real worker on a tiny MoiraiModule (own env) -> feature Parquet."""
    model, other_model = moirai_dirs
    rng = np.random.default_rng(5)
    n_var, paths = 4, []
    for k, steps in enumerate((64, 40, 64, 21)):
        frame = pd.DataFrame(rng.normal(80, 15, size=(steps, n_var)), columns=[f"v{j}" for j in range(n_var)])
        if k == 2:  # gaps: each variable misses a block, but every 32-step patch has some observation
            for j in range(n_var):
                frame.iloc[8 * j + 4 : 8 * j + 20, j] = np.nan
            frame.iloc[:, 3] = np.nan  # and one variable is never measured
        frame.insert(0, "hour", np.arange(steps))
        frame.to_csv(tmp_path / f"ts{k}.csv", index=False)
        paths.append(str(tmp_path / f"ts{k}.csv"))
    all_nan = tmp_path / "all_nan.csv"
    pd.DataFrame({"hour": [0, 1], **{f"v{j}": [np.nan, np.nan] for j in range(n_var)}}).to_csv(all_nan, index=False)
    ids = ["full", "short", "gaps", "odd", "none", "all_nan"]
    values = [*paths, None, str(all_nan)]
    ext = create_extractor("moirai", {"local_dir": str(model)})
    assert ext.patch_size() == 32 and ext.metadata()["patch_size_resolved"] == 32  # hourly (uni2ts constraints)
    failed = export_series(ext, ids, values, str(tmp_path / "series.npz"))
    assert list(failed) == ["all_nan"] and "no observed values" in failed["all_nan"]

    emb = _worker(moirai_env, model, tmp_path / "series.npz", tmp_path / "emb8.npz", batch_size=8)
    assert write_worker_features(ext, ids, values, str(tmp_path / "emb8.npz"), str(tmp_path / "f.parquet")) == 4
    ff = read_features(tmp_path / "f.parquet")
    assert ff.embeddings.shape == (6, 384) and ff.embeddings.dtype == np.float32
    assert ff.present.tolist() == [True, True, True, True, False, False]
    assert np.isfinite(ff.embeddings).all() and not np.allclose(ff.embeddings[0], ff.embeddings[2])

    # Reference: MoiraiModule.forward itself on hand-packed single samples (full and gappy series).
    _in_moirai_env(moirai_env, str(ENV_TOOLS), "reference", str(model), str(tmp_path / "series.npz"),
                   str(tmp_path / "ref.npz"), "--ids", "full,gaps", "--patch-size", "32")
    with np.load(tmp_path / "ref.npz") as data:
        ref = dict(zip(data["sample_ids"].tolist(), data["embeddings"], strict=True))
    for sid in ("full", "gaps"):
        np.testing.assert_allclose(ff.embeddings[ids.index(sid)], ref[sid], atol=1e-4, rtol=1e-4)

    # Batch size 1 (no left padding) == batched with longer series; deterministic; weights matter.
    np.testing.assert_allclose(_worker(moirai_env, model, tmp_path / "series.npz", tmp_path / "b1.npz", 1), emb,
                               atol=1e-5, rtol=1e-5)
    assert np.array_equal(_worker(moirai_env, model, tmp_path / "series.npz", tmp_path / "again.npz", 8), emb)
    other = _worker(moirai_env, other_model, tmp_path / "series.npz", tmp_path / "other.npz", 8)
    assert np.abs(other - emb).max() > 1e-2


def test_moirai_needs_its_environment() -> None:
    with pytest.raises(ModelUnavailableError, match="workflow/envs/moirai.yaml"):
        create_extractor("moirai").load()


def test_moirai_packing_layout() -> None:
    values = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
    values[0, :4] = np.nan  # sample 0 has 6 real steps (left padding)
    values[1, 7, 2] = np.nan  # one missing measurement
    packed = moirai_worker.pack_series(values, np.array([6, 10]), patch_size=4, max_patch_size=8)
    # 10 steps -> left-padded to 12 -> 3 patches per variate, variate-major: 3 x 3 tokens.
    assert packed["target"].shape == (2, 9, 8) and packed["observed_mask"].shape == (2, 9, 8)
    assert packed["variate_id"][0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert packed["observed_mask"][..., 4:].sum() == 0 and packed["patch_size"].unique().tolist() == [4]
    # Sample 0: padding steps (first 6 of 12) are unobserved; its first patch is pure padding (sample id 0).
    assert packed["sample_id"][0].tolist() == [0, 1, 1] * 3 and packed["sample_id"][1].tolist() == [1] * 9
    assert packed["time_id"][0].tolist() == [0, 0, 1] * 3 and packed["time_id"][1].tolist() == [0, 1, 2] * 3
    # Variate 1, last patch of sample 1 = steps 8..11 of the padded series = original steps 6..9.
    np.testing.assert_array_equal(packed["target"][1, 5, :4].numpy(), values[1, 6:10, 1])
    missing = packed["observed_mask"][1, 8, :4].tolist()  # variate 2, last patch: step 7 missing
    assert missing == [True, False, True, True] and packed["target"][1, 8, 1] == 0.0
    assert not packed["prediction_mask"].any()


def test_moirai_packing_does_not_depend_on_batch_width() -> None:
    rng = np.random.default_rng(0)
    short = rng.normal(size=(13, 4)).astype(np.float32)
    alone = moirai_worker.pack_series(short[None], np.array([13]), 8, 128)
    padded = np.full((1, 29, 4), np.nan, np.float32)
    padded[0, 16:] = short
    wide = moirai_worker.pack_series(padded, np.array([13]), 8, 128)
    keep = wide["sample_id"][0] > 0
    for key in ("target", "observed_mask", "time_id", "variate_id"):
        assert torch.equal(wide[key][0][keep], alone[key][0][alone["sample_id"][0] > 0]), key


def test_moirai_worker_protocol_roundtrip(tmp_path: Path) -> None:
    """Main-env steps around the worker: export prepared series, import its embeddings file."""
    paths = _series(tmp_path, lengths=(24, 16), n_var=5)
    bad = tmp_path / "missing.csv"
    values, ids = [paths[0], None, str(bad), paths[1]], ["a", "b", "c", "d"]
    ext = create_extractor("moirai")
    failed = export_series(ext, ids, values, str(tmp_path / "series.npz"))
    assert list(failed) == ["c"]
    with np.load(tmp_path / "series.npz") as data:
        assert data["sample_ids"].tolist() == ["a", "d"] and data["values"].shape == (2, 24, 5)
        assert data["lengths"].tolist() == [24, 16] and np.isnan(data["values"][1, :8]).all()
    # Stand-in for the worker's output file (the worker itself needs uni2ts): known rows per id.
    rows = np.stack([np.full(384, 1.0, np.float32), np.full(384, 2.0, np.float32)])
    np.savez(tmp_path / "emb.npz", sample_ids=np.array(["d", "a"]), embeddings=rows)
    assert write_worker_features(ext, ids, values, str(tmp_path / "emb.npz"), str(tmp_path / "f.parquet")) == 2
    ff = read_features(tmp_path / "f.parquet")
    assert ff.present.tolist() == [True, False, False, True]
    assert ff.embeddings[0, 0] == 2.0 and ff.embeddings[3, 0] == 1.0 and ff.metadata["extractor"] == "moirai"
    args = ext.worker_args()
    assert args[:2] == ["--model", "Salesforce/moirai-1.0-R-small"] and "--local-files-only" in args


def test_moirai_rules_end_to_end(moirai_env, moirai_dirs, tmp_path: Path) -> None:
    """The workflow's three MOIRAI rules (export -> worker -> features) on a demo ICU cohort."""
    from workflow_helpers import snakemake, tiny_config

    cfg = tiny_config()
    cfg["demo"]["cohorts"] = {"demo_mimic": {"kind": "icu", "n_patients": 20, "seed": 2}}
    cfg["datasets"] = {"demo_mimic": cfg["datasets"]["demo_mimic"]}
    cfg["datasets"]["demo_mimic"].pop("external", None)
    cfg["experts"]["profiles"]["demo"]["timeseries"]["committee"][0] = {"name": "moirai", "role": "biomed"}
    cfg["experts"]["settings"] = {"moirai": {"local_dir": str(moirai_dirs[0]), "batch_size": 4, "device": "cpu"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    # The rule's `python` is this interpreter with the MOIRAI packages on its path (the conda env's role).
    env = {**moirai_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    target = "results/demo_mimic/features/ehr/moirai.parquet"
    snakemake(tmp_path, "--cores", "2", target, env=env)
    ff = read_features(tmp_path / target)
    cohort = pd.read_parquet(tmp_path / "results/demo_mimic/cohort.parquet")
    assert ff.sample_ids == cohort["sample_id"].tolist() and ff.embeddings.shape[1] == 384
    has_series = cohort["input:ehr"].notna().to_numpy()
    assert 0 < ff.present.sum() <= has_series.sum() and not ff.present[~has_series].any()
    assert np.isfinite(ff.embeddings[ff.present]).all() and np.abs(ff.embeddings[ff.present]).sum(1).min() > 0
    log = (tmp_path / "logs/extract/demo_mimic/ehr/moirai.log").read_text()
    assert f"{ff.present.sum()} present" in log
    assert not (tmp_path / "results/demo_mimic/moirai/ehr/embeddings.npz").exists()  # temp() intermediates


def test_moirai_worker_loads_safetensors_strictly(moirai_env, moirai_dirs, tmp_path: Path) -> None:
    """No unpickling in the torch<2.5 env, and a checkpoint missing a tensor is refused."""
    from safetensors.numpy import load_file, save_file

    series = tmp_path / "series.npz"
    np.savez(series, sample_ids=np.array(["a"]), values=np.ones((1, 16, 2), np.float32), lengths=np.array([16]))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((moirai_dirs[0] / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text((moirai_dirs[0] / "config.json").read_text())
    tensors = load_file(moirai_dirs[0] / "model.safetensors")
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, incomplete / "model.safetensors")
    for folder, message in ((pickled, "no model.safetensors"), (incomplete, "Missing key")):
        proc = subprocess.run([sys.executable, str(WORKER), "--input", str(series), "--output", str(tmp_path / "o.npz"),
                               "--model", str(folder), "--local-files-only"], env=moirai_env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "o.npz").exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MEDMIX_MOIRAI_PYTHON"),
                    reason="opt-in: set MEDMIX_MOIRAI_PYTHON to the python of an env with uni2ts 2.0.0 "
                           "(conda env create -f workflow/envs/moirai.yaml, or a venv with pip install "
                           "uni2ts==2.0.0; ~6 GB)")
def test_moirai_worker_same_in_production_env(moirai_env, moirai_dirs, tmp_path: Path) -> None:
    """The worker in the real MOIRAI env (torch<2.5, numpy 1.26, all of uni2ts) == the test env."""
    prod_python = os.environ["MEDMIX_MOIRAI_PYTHON"]
    versions = subprocess.run([prod_python, "-c", "import torch, numpy, uni2ts; print(torch.__version__, "
                               "numpy.__version__, uni2ts.__version__)"], capture_output=True, text=True, check=True)
    assert versions.stdout.split()[2] == "2.0.0", versions.stdout
    paths = _series(tmp_path, lengths=(64, 40, 200), n_var=46)
    ids = ["a", "b", "c"]
    export_series(create_extractor("moirai", {"local_dir": str(moirai_dirs[0])}), ids, paths,
                  str(tmp_path / "series.npz"))
    args = ["--input", str(tmp_path / "series.npz"), "--model", str(moirai_dirs[0]), "--local-files-only",
            "--device", "cpu"]
    test_env = _worker(moirai_env, moirai_dirs[0], tmp_path / "series.npz", tmp_path / "t.npz", 16)
    proc = subprocess.run([prod_python, str(WORKER), *args, "--output", str(tmp_path / "p.npz")],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "p.npz") as data:
        np.testing.assert_allclose(data["embeddings"], test_env, atol=1e-5, rtol=1e-5)
