"""``medmix fetch`` (extractors/fetch.py), the one online/offline rule and the lock, against a
loopback hub (tests/local_hub.py) serving the tiny random-weight models of tests/tiny_models.py.

The session stays hermetic (tests/hermetic.py): huggingface_hub's offline switch is lifted only in
the tests that fetch (``online``), and every request goes to ``127.0.0.1``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from config_helpers import default_config
from local_hub import LocalHub
from tiny_models import build_chronos

from extractors.base import ModelUnavailableError
from extractors.fetch import (
    ModelRequirement,
    config_requirements,
    describe,
    fetch,
    load_config,
    main,
    requirements,
    snapshot_folder,
    verify_snapshot,
)
from extractors.hf_common import (
    LOCK_ENV,
    OFFLINE_ENV,
    hub_load_kwargs,
    offline_mode,
    read_lock,
    resolve_revision,
)
from extractors.registry import create_extractor, get_spec

REPO = Path(__file__).resolve().parents[1]
LARGE = "amazon/chronos-t5-large"  # chronos_large: revision "main" in the registry
SMALL = "amazon/chronos-t5-small"  # chronos_small: a pinned commit
MAIRA2 = "microsoft/maira-2"  # gated, pinned (the bridge's default_revision)
ACCEPTED = "hf_accepted_the_licence"


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub may send requests (the session is offline; only loopback is reachable)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {"large": build_chronos(root / "large", d_model=1024),
            "large_v2": build_chronos(root / "large2", d_model=1024,
                                                                                             seed=1),
            "small": build_chronos(root / "small", d_model=512)}


def _hub(tiny: dict[str, Path]) -> LocalHub:
    hub = LocalHub().start()
    hub.add_commit(LARGE, tiny["large"])
    hub.add_commit(SMALL, tiny["small"], sha=get_spec("chronos_small").revision)
    import torch
    from safetensors.torch import save

    hub.add_commit(MAIRA2, {"config.json": b'{"model_type": "maira2"}', "modeling_maira2.py": b"# remote code\n",
                            "model.safetensors": save({"w": torch.zeros(4)})},
                   sha="795a2b1cd4a310624b4e3d14b5a23e41fd273deb")
    hub.gate(MAIRA2, tokens=(ACCEPTED,))
    return hub


@pytest.fixture(scope="module")
def hub(tiny):
    hub = _hub(tiny)
    yield hub
    hub.stop()


@pytest.fixture
def fresh_hub(tiny):
    """A hub of its own, for tests that move `main`."""
    hub = _hub(tiny)
    yield hub
    hub.stop()


def _large() -> list[ModelRequirement]:
    return requirements(["chronos_large"], {})


# -- requirements --------------------------------------------------------------------------------
def test_paper_profile_requirements_cover_every_expert_teacher_encoder_and_bridge():
    reqs = {(r.model_id, r.fetchable): r for r in config_requirements(load_config(), "paper")}
    fetchable = {m: r for (m, ok), r in reqs.items() if ok}
    for name in ("biomedclip", "dinov2_base", "dinov3_vitl", "gatortron_base", "qwen2_05b", "qwen2_7b", "moirai",
                 "chronos_small", "chronos_large", "merlin", "radfm", "dinov2_ct25d", "dinov3_slide"):
        spec = get_spec(name)
        assert fetchable[spec.hub_id].revision == spec.revision and name in fetchable[spec.hub_id].used_by, name
    assert {m for m, r in fetchable.items() if not r.pinned} == {
        LARGE, "stanfordmimi/Merlin", "chaoyi-wu/RadFM", "Salesforce/moirai-1.0-R-small",
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"}
    assert {m for m, r in fetchable.items() if r.gated} == {"facebook/dinov3-vitl16-pretrain-lvd1689m", MAIRA2}
    # the RAG expert: MedCPT query + article encoders, Qwen2-0.5B (shared with qwen2_05b), MAIRA-2 (remote code)
    assert {"ncbi/MedCPT-Query-Encoder", "ncbi/MedCPT-Article-Encoder", "Qwen/Qwen2-0.5B"} <= set(fetchable)
    assert fetchable[MAIRA2].remote_code and "*.py" in fetchable[MAIRA2].patterns
    assert len(fetchable["Qwen/Qwen2-0.5B"].used_by) == 2
    # Merlin's and HistGen's report generators are not hub downloads here: listed with the reason
    assert (not reqs[("stanfordmimi/Merlin", False)].fetchable
            and "merlin-vlm" in reqs[("stanfordmimi/Merlin", False)].note)
    assert "HistGen" in reqs[("dddavid4real/HistGen", False)].note
    assert fetchable["chaoyi-wu/RadFM"].unpack == "pytorch_model.bin"
    # a local_dir and the bundled MiniLM need no download; weight-free experts need nothing
    local = requirements(["chronos_large", "minilm_l6", "ts_summary"], {"chronos_large": {"local_dir": "/models/c"}})
    assert [r.fetchable for r in local] == [False, False]


# -- fetch, lock, second call ------------------------------------------------------------------
def test_fetch_plans_downloads_verifies_and_locks_then_a_second_call_downloads_nothing(hub, online, tmp_path):
    cache, lock = tmp_path / "cache", tmp_path / "medmix.lock.json"
    lines: list[str] = []
    planned = fetch(_large(), lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lines.append)
    assert not lock.exists() and not cache.exists() and planned.items[0].state == "download"
    text = "\n".join(lines)
    assert "model.safetensors" in text and "MB" in text and "run again with --yes" in text

    result = fetch(_large(), yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lines.append)
    head = hub.head(LARGE)
    assert result.failures == {} and result.downloaded == [LARGE]
    entry = json.loads(lock.read_text())["models"][LARGE]
    served = hub.repos[LARGE].commits[head]
    assert entry["revision"] == "main" and entry["commit"] == head and entry["used_by"] == ["chronos_large"]
    assert entry["files"]["model.safetensors"] == {"size": len(served["model.safetensors"].data),
                                                    "sha256": served["model.safetensors"].sha256}
    assert entry["files"]["config.json"]["etag"] == served["config.json"].oid
    assert not verify_snapshot(_large()[0], head, {n: f["size"] for n, f in entry["files"].items()}, cache)
    assert (cache / "models--amazon--chronos-t5-large" / "refs" / "main").read_text() == head

    hub.clear()
    stamp = lock.stat().st_mtime_ns
    again = fetch(_large(), yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lines.append)
    assert hub.requests == [] and again.downloaded == [] and lock.stat().st_mtime_ns == stamp
    [row] = describe(_large(), cache, read_lock(lock))
    assert row["lock"] == f"locked {head}" and row["in_cache"] and row["size"] == sum(
        f["size"] for f in entry["files"].values())


def test_a_damaged_cached_file_is_refetched(hub, online, tmp_path):
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    fetch(_large(), yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    weights = snapshot_folder(LARGE, hub.head(LARGE), cache) / "model.safetensors"
    blob = Path(os.path.realpath(weights))
    size = blob.stat().st_size
    blob.write_bytes(b"\xff" * size)  # same size, unreadable header
    files = {n: f["size"] for n, f in read_lock(lock)["models"][LARGE]["files"].items()}
    assert any("safetensors header" in p for p in verify_snapshot(_large()[0], hub.head(LARGE), files, cache))
    result = fetch(_large(), yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    assert result.failures == {} and result.downloaded == [LARGE]
    assert not verify_snapshot(_large()[0], hub.head(LARGE), files, cache)


def test_an_interrupted_download_resumes_with_a_range_request(hub, online, tmp_path):
    """A `medmix fetch` killed while downloading leaves blobs/<etag>.incomplete; the next one asks
    only for the rest (Range) and the file's sha256 matches."""
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    data = hub.repos[LARGE].commits[hub.head(LARGE)]["model.safetensors"]
    hub.throttle[(LARGE, "model.safetensors")] = 4_000_000  # ~6 s for the tiny model's 22 MB
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "extractors.fetch", "--experts", "chronos_large", "--yes", "--endpoint", hub.url,
           "--cache-dir", str(cache), "--lock", str(lock)]
    partial = cache / "models--amazon--chronos-t5-large" / "blobs" / f"{data.sha256}.incomplete"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (partial.is_file() and partial.stat().st_size > 2_000_000):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        hub.throttle.clear()
    have = partial.stat().st_size
    assert 0 < have < len(data.data) and not lock.exists()
    hub.clear()
    lines: list[str] = []
    result = fetch(_large(), yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lines.append)
    assert result.failures == {} and "model.safetensors: resumed a partial download" in "\n".join(lines)
    # (the killed download's GET may be recorded late: its server thread stops at the broken pipe)
    [get] = [r for r in hub.requests if r.method == "GET" and r.path.endswith("/model.safetensors") and r.range]
    assert get.range == f"bytes={have}-" and get.status == 206 and get.sent == len(data.data) - have
    assert read_lock(lock)["models"][LARGE]["files"]["model.safetensors"]["sha256"] == data.sha256
    assert not partial.exists()


def test_a_gated_model_names_the_licence_step_and_hf_token(hub, online, tmp_path, monkeypatch, capsys):
    [maira] = [r for r in requirements(["rag_medcpt_qwen2"], {}, bridge_kinds=["image"]) if r.model_id == MAIRA2]
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    result = fetch([maira], yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    message = result.failures[MAIRA2]
    assert "accept its licence on https://huggingface.co/microsoft/maira-2" in message and "HF_TOKEN" in message
    assert MAIRA2 not in read_lock(lock)["models"]
    assert any(r.status == 401 for r in hub.requests if "/resolve/" in r.path)
    monkeypatch.setenv("HF_TOKEN", "hf_not_accepted")  # a token whose account has not accepted: 403
    result = fetch([maira], yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    assert "accept its licence" in result.failures[MAIRA2]
    code = main(["--experts", "rag_medcpt_qwen2", "--yes", "--endpoint", hub.url, "--cache-dir", str(cache),
                 "--lock", str(lock)])
    assert code == 1 and "microsoft/maira-2: microsoft/maira-2 is gated: accept its licence" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", ACCEPTED)
    result = fetch([maira], yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    assert result.failures == {} and read_lock(lock)["models"][MAIRA2]["gated"] is True
    assert "modeling_maira2.py" in read_lock(lock)["models"][MAIRA2]["files"]  # its remote code is fetched


def test_update_moves_a_main_revision_and_nothing_else(fresh_hub, tiny, online, tmp_path):
    hub, cache, lock = fresh_hub, tmp_path / "cache", tmp_path / "lock.json"
    reqs = requirements(["chronos_large", "chronos_small"], {})
    fetch(reqs, yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    old = hub.head(LARGE)
    assert read_lock(lock)["models"][SMALL]["commit"] == get_spec("chronos_small").revision
    new = hub.add_commit(LARGE, tiny["large_v2"])
    hub.clear()
    fetch(reqs, yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    assert read_lock(lock)["models"][LARGE]["commit"] == old and hub.requests == []  # locked: not re-resolved
    lines: list[str] = []
    result = fetch(reqs, yes=True, update=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lines.append)
    assert result.downloaded == [LARGE] and f"updated from {old[:10]}" in "\n".join(lines)
    models = read_lock(lock)["models"]
    assert models[LARGE]["commit"] == new and models[SMALL]["commit"] == get_spec("chronos_small").revision
    assert not [r for r in hub.requests if SMALL in r.path and "/resolve/" in r.path]  # pinned: never moves


# -- the lock in the loaders -------------------------------------------------------------------
def _write_lock(path: Path, models: dict[str, tuple[str, str]]) -> None:
    path.write_text(json.dumps({"format": 1, "models": {m: {"revision": rev, "commit": sha, "files": {}}
                                                        for m, (rev, sha) in models.items()}}))


def test_a_main_revision_reads_the_locked_commit_everywhere(tmp_path, monkeypatch, caplog):
    lock = tmp_path / "medmix.lock.json"
    a, b, c, d = "a" * 40, "b" * 40, "c" * 40, "d" * 40
    _write_lock(lock, {LARGE: ("main", a), "Salesforce/moirai-1.0-R-small": ("main", b), "chaoyi-wu/RadFM": ("main", c),
                       "Qwen/Qwen2-0.5B": ("main", d)})
    monkeypatch.setenv(LOCK_ENV, str(lock))
    ex = create_extractor("chronos_large")
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        assert ex.hub_revision(LARGE) == a and ex.load_kwargs(LARGE) == {"revision": a, "local_files_only": True}
    assert "not a pinned commit" not in caplog.text  # locked: no warning
    meta = ex.metadata()
    assert meta["revision"] == "main" and meta["commit"] == a  # identity unchanged, the commit recorded
    assert create_extractor("chronos_small").metadata()["commit"] == get_spec("chronos_small").revision
    args = create_extractor("moirai").worker_args()
    assert args[args.index("--revision") + 1] == b
    assert create_extractor("radfm").fetched_dir().endswith(f"models--chaoyi-wu--RadFM/{c}")
    rag = create_extractor("rag_medcpt_qwen2", {"revision": "main"})  # its language model at `main`
    assert rag.commits()["Qwen/Qwen2-0.5B"] == d and rag.metadata()["commits"]["Qwen/Qwen2-0.5B"] == d
    assert hub_load_kwargs("Qwen/Qwen2-0.5B", "main", "Qwen/Qwen2-0.5B", "t")["revision"] == d
    # another requested revision is not what the lock recorded: read as is, warned once with the fix
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medmix.extract"):
        assert resolve_revision(LARGE, "v2", "encoder x", "experts.settings.x.revision") == "v2"
        assert resolve_revision(LARGE, "v2", "encoder x") == "v2"
    assert caplog.text.count("medmix fetch --yes") == 1 and "experts.settings.x.revision" in caplog.text


def test_one_offline_rule_for_every_loader(monkeypatch, tmp_path):
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    assert offline_mode() is True and offline_mode({"offline": False}) is False  # default offline; override
    monkeypatch.setenv(OFFLINE_ENV, "0")  # experts.offline: false (the workflow sets it for its jobs)
    assert offline_mode() is False and offline_mode({"offline": True}) is True
    assert create_extractor("dinov2_base").offline() is False
    assert create_extractor("dinov2_base", {"options": {"offline": True}}).offline() is True
    rag = create_extractor("rag_medcpt_qwen2", {"options": {"offline": True}})
    assert rag.article_encoder_spec().offline is True and rag.lm_spec().offline is True
    assert hub_load_kwargs(LARGE, "main", LARGE, "x", {"offline": True})["local_files_only"] is True
    assert hub_load_kwargs(LARGE, "main", str(tmp_path), "x") == {"revision": None, "local_files_only": True}
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert create_extractor("dinov2_base").offline() is True


def _medcpt(expert: str = "rag_medcpt_qwen2"):
    from extractors.knowledge.encoders import MEDCPT_QUERY, MEDCPT_QUERY_REVISION, EncoderSpec, build_encoder

    return build_encoder(EncoderSpec("medcpt", MEDCPT_QUERY, MEDCPT_QUERY_REVISION, expert=expert))


@pytest.mark.parametrize("family, name", [("text HF", "gatortron_base"), ("vision HF", "dinov2_base"),
                                          ("timeseries", "chronos_small"), ("CT 3D", "merlin"), ("CT 3D", "radfm"),
                                          ("RAG encoder", "rag_medcpt_qwen2")])
def test_every_model_unavailable_error_names_the_commands_that_work(family, name):
    """Nothing in the (session's empty) cache: each loader family fails at once naming `medmix fetch`
    for that expert and its local_dir."""
    from extractors.knowledge.encoders import EncoderUnavailableError

    with pytest.raises((ModelUnavailableError, EncoderUnavailableError)) as err:
        if family == "RAG encoder":
            _medcpt(name)
        else:
            create_extractor(name).load()
    message = str(err.value)
    assert f"medmix fetch --experts {name} --yes" in message, message
    assert f"experts.settings.{name}.local_dir" in message and "HF_HUB_OFFLINE=0" not in message


def test_the_projection_language_model_names_the_fix():
    from extractors.knowledge.projection import token_mean_embeddings

    with pytest.raises(ModelUnavailableError, match=r"medmix fetch --experts rag_medcpt_qwen2 --yes"):
        token_mean_embeddings("Qwen/Qwen2-0.5B", "main", ["t"], ["x"], model_id="Qwen/Qwen2-0.5B",
                              expert="rag_medcpt_qwen2")


def test_main_lists_without_requests_and_plans_without_yes(hub, online, tmp_path, capsys):
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    assert main(["--experts", "chronos_large,chronos_small", "--list", "--cache-dir", str(cache), "--lock",
                 str(lock)]) == 0
    out = capsys.readouterr().out
    assert f"{LARGE}" in out and "unlocked" in out and "pinned" in out and "not in cache" in out
    hub.clear()
    assert main(["--experts", "chronos_large", "--endpoint", hub.url, "--cache-dir", str(cache), "--lock",
                 str(lock)]) == 0
    assert "run again with --yes" in capsys.readouterr().out and not lock.exists()
    assert hub.count("GET", "/resolve/") == 0  # the plan asks the API only
    assert main(["--profile", "demo", "--lock", str(lock)]) == 0
    assert "nothing to fetch" in capsys.readouterr().out


# -- the workflow: a moved `main` reruns exactly that expert -------------------------------------
def _snakemake(workdir: Path, env: dict[str, str], *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**env, "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_moved_main_replans_exactly_that_experts_extraction(fresh_hub, tiny, online, tmp_path):
    hub, workdir, cache = fresh_hub, tmp_path / "wf", tmp_path / "hf-cache"
    workdir.mkdir()
    cfg = default_config()
    cfg["seeds"], cfg["methods"] = [0], ["medmix", "meanavg"]
    cfg["demo"]["cohorts"] = {"demo_openi": {"kind": "cxr", "n_patients": 30, "seed": 1},
                              "demo_mimic": {"kind": "icu", "n_patients": 30, "seed": 2},
                              "demo_mimic_ext": {"kind": "icu", "n_patients": 20, "seed": 3, "shift": True}}
    cfg["experts"]["profiles"]["demo"]["timeseries"] = {"committee": [
        {"name": "chronos_large", "role": "biomed"}, {"name": "chronos_small", "role": "general"},
        {"name": "ts_summary", "role": "general"}]}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    reqs = requirements(["chronos_large", "chronos_small"], {})
    lock = workdir / "medmix.lock.json"  # where the workflow reads it (its working directory)
    fetch(reqs, yes=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    env = {**os.environ, "HF_HUB_CACHE": str(cache)}  # jobs stay offline (experts.offline: true)
    targets = [f"results/demo_mimic/features/ehr/{e}.parquet" for e in ("chronos_large", "chronos_small", "ts_summary")]
    _snakemake(workdir, env, *targets)
    from medmix.store import read_metadata

    meta = read_metadata(workdir / targets[0])
    assert meta["revision"] == "main" and meta["commit"] == hub.head(LARGE)
    assert read_metadata(workdir / targets[1])["commit"] == get_spec("chronos_small").revision
    assert "Nothing to be done" in _snakemake(workdir, env, "-n", *targets)

    hub.add_commit(LARGE, tiny["large_v2"])  # main moves on the hub
    assert "Nothing to be done" in _snakemake(workdir, env, "-n", *targets)  # locked: nothing moves by itself
    fetch(reqs, yes=True, update=True, lock_file=lock, cache_dir=cache, endpoint=hub.url, out=lambda _: None)
    assert read_lock(lock)["models"][LARGE]["commit"] == hub.head(LARGE)
    plan = _snakemake(workdir, env, "-n", *targets)
    jobs = [line.split()[-1] for line in plan.splitlines() if line.strip().startswith("output:")]
    assert jobs == [targets[0]], plan[-3000:]
    assert "params have changed since last execution" in plan.lower(), plan[-3000:]  # the locked commit
    _snakemake(workdir, env, *targets)
    assert read_metadata(workdir / targets[0])["commit"] == hub.head(LARGE)


def test_fetch_under_hf_hub_offline_asks_nothing_and_says_how(tmp_path):
    """The session's HF_HUB_OFFLINE=1 (as a user's): no request, the command that works instead."""
    result = fetch(_large(), yes=True, lock_file=tmp_path / "lock.json", cache_dir=tmp_path / "cache",
                   out=lambda _: None)
    assert "HF_HUB_OFFLINE=0 medmix fetch --yes" in result.failures[LARGE] and result.downloaded == []


TINY_RADFM = {"image_size": 64, "frames": 64, "image_patch_size": 16, "frame_patch_size": 4, "dim": 768, "depth": 1,
              "heads": 2, "dim_head": 32, "mlp_dim": 64, "perceiver_depth": 1, "perceiver_heads": 2,
              "perceiver_dim_head": 32, "num_latents": 4, "perceiver_ff_mult": 1}


def test_radfm_zip_is_fetched_unpacked_and_read_at_the_locked_commit(fresh_hub, online, tmp_path, monkeypatch):
    import io
    import zipfile

    import torch
    from huggingface_hub import constants

    from extractors.radfm_vision import RadFMVision, RadFMVisionConfig

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))  # where the zip is unpacked
    torch.manual_seed(0)
    source = RadFMVision(RadFMVisionConfig(**TINY_RADFM))
    state = {f"embedding_layer.vision_encoder.{k}": t for k, t in source.vision_encoder.state_dict().items()}
    state.update({f"embedding_layer.perceiver.{k}": t for k, t in source.perceiver.state_dict().items()})
    weights, archive = io.BytesIO(), io.BytesIO()
    torch.save(state, weights)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("RadFM/pytorch_model.bin", weights.getvalue())
    sha = fresh_hub.add_commit("chaoyi-wu/RadFM", {"pytorch_model.zip": archive.getvalue(), "README.md": b"RadFM\n"})
    lock = tmp_path / "medmix.lock.json"
    monkeypatch.setenv(LOCK_ENV, str(lock))
    result = fetch(requirements(["radfm"], {}), yes=True, lock_file=lock, cache_dir=tmp_path / "cache",
                   endpoint=fresh_hub.url, out=lambda _: None)
    assert result.failures == {} and set(read_lock(lock)["models"]["chaoyi-wu/RadFM"]["files"]) == {"pytorch_model.zip"}
    ex = create_extractor("radfm", {"device": "cpu"})
    folder = Path(ex.fetched_dir())
    assert folder.name == sha and (folder / "pytorch_model.bin").read_bytes() == weights.getvalue()
    (folder / "radfm_vision_config.json").write_text(json.dumps(TINY_RADFM))  # the tiny architecture
    ex.load()  # strict load of the visual tensors from the unpacked checkpoint
    assert ex.metadata()["commit"] == sha and ex.metadata()["revision"] == "main"


def test_a_partial_snapshot_is_accepted_offline_by_snapshot_readers(fresh_hub, online, tmp_path, monkeypatch):
    """resnet50 / BiomedCLIP read the snapshot folder with snapshot_download(local_files_only=True):
    the hub repository's other files (README, .bin twins) are not fetched, and that must not make the
    verified snapshot "incomplete" offline."""
    import torch
    from huggingface_hub import constants
    from safetensors.torch import save

    revision = get_spec("resnet50").revision
    config = {"architecture": "resnet50", "num_classes": 1000, "pretrained_cfg": {"input_size": [3, 224, 224]}}
    fresh_hub.add_commit("timm/resnet50.a1_in1k", {
        "config.json": json.dumps(config).encode(), "model.safetensors": save({"fc.weight": torch.zeros(2, 2)}),
        "pytorch_model.bin": b"a pickle", "README.md": b"card"}, sha=revision)
    cache = tmp_path / "cache"
    result = fetch(requirements(["resnet50"], {}), yes=True, lock_file=tmp_path / "lock.json", cache_dir=cache,
                   endpoint=fresh_hub.url, out=lambda _: None)
    assert result.failures == {} and sorted(read_lock(tmp_path / "lock.json")["models"]["timm/resnet50.a1_in1k"][
        "files"]) == ["config.json", "model.safetensors"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    ex = create_extractor("resnet50")
    assert ex.repo_config()["architecture"] == "resnet50"
    assert Path(ex.repo_config()["folder"]) == snapshot_folder("timm/resnet50.a1_in1k", revision, cache)


def _tiny_bert(folder: Path) -> Path:
    from tiny_models import WORDS
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def test_each_loader_family_reads_the_fetched_cache_offline(fresh_hub, online, tmp_path, monkeypatch):
    """text HF (GatorTron), vision HF (DINOv2-B) and the RAG query encoder (MedCPT) at their pinned
    commits, fetched from the hub and then read with the hub offline (the timeseries family: the
    snakemake test; CT 3D: RadFM above)."""
    import numpy as np
    from huggingface_hub import constants
    from PIL import Image
    from tiny_models import build_dinov2, build_gatortron

    from extractors.knowledge.encoders import MEDCPT_QUERY, MEDCPT_QUERY_REVISION, EncoderSpec, build_encoder

    fresh_hub.add_commit("UFNLP/gatortron-base", build_gatortron(tmp_path / "g"),
                         sha=get_spec("gatortron_base").revision)
    fresh_hub.add_commit("facebook/dinov2-base", build_dinov2(tmp_path / "d"), sha=get_spec("dinov2_base").revision)
    fresh_hub.add_commit(MEDCPT_QUERY, _tiny_bert(tmp_path / "q"), sha=MEDCPT_QUERY_REVISION)
    reqs = [r for r in requirements(["gatortron_base", "dinov2_base", "rag_medcpt_qwen2"], {})
            if r.model_id in ("UFNLP/gatortron-base", "facebook/dinov2-base", MEDCPT_QUERY)]
    cache = tmp_path / "cache"
    result = fetch(reqs, yes=True, lock_file=tmp_path / "lock.json", cache_dir=cache, endpoint=fresh_hub.url,
                   out=lambda _: None)
    assert result.failures == {} and len(result.downloaded) == 3
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    fresh_hub.clear()
    text = create_extractor("gatortron_base", {"device": "cpu", "batch_size": 2})
    assert text.embed_batch([text.prepare("the patient has no acute process")]).shape == (1, 1024)
    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(image)
    vision = create_extractor("dinov2_base", {"device": "cpu"})
    assert vision.embed_batch([vision.prepare(str(image))]).shape == (1, 768)
    encoder = build_encoder(EncoderSpec("medcpt", MEDCPT_QUERY, MEDCPT_QUERY_REVISION, max_length=16,
                                        expert="rag_medcpt_qwen2"))
    assert encoder.encode_queries(["heart size is normal"]).shape == (1, 32)
    assert fresh_hub.requests == []  # all read from the cache


def test_an_unreachable_hub_is_asked_once(online, tmp_path):
    """A hub that does not answer (a closed loopback port): one attempt, every model reported."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    reqs = requirements(["chronos_large", "chronos_small", "gatortron_base"], {})
    items = fetch(reqs, yes=True, lock_file=tmp_path / "lock.json", cache_dir=tmp_path / "cache",
                  endpoint=f"http://127.0.0.1:{port}", out=lambda _: None).items
    assert [i.state for i in items] == ["unreachable"] * 3 and "hub unreachable" in items[2].detail
