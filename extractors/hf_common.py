"""Loading and inference helpers shared by the Hugging Face-hosted foundation-model experts.

Every such expert loads with ``from_pretrained(model_source(), revision=..., local_files_only=
<offline>)``: ``local_dir`` (a folder with the weights) wins over the hub id. Any failure to find
the weights becomes :class:`~extractors.base.ModelUnavailableError` at once, naming the model id
and the commands that provide it (``medmix fetch``, ``local_dir``).

One online/offline rule for every loader (experts, teachers, RAG encoders, the projection's
language model, report bridges): :func:`offline_mode`. ``experts.settings.<name>.options.offline``
if set, else the global ``experts.offline`` (the workflow passes it to its jobs as
``MEDMIX_HF_OFFLINE``), else true. Offline, ``HF_HUB_OFFLINE=1`` is set before the hub client is
imported and only the Hugging Face cache (filled by ``medmix fetch``, :mod:`extractors.fetch`) or
``local_dir`` is read; ``experts.offline: false`` lets jobs download on demand.
:func:`hub_load_kwargs` gives the ``revision`` / ``local_files_only`` pair every loader passes.

Revisions: a 40-hex commit is used as is. A branch-like revision (``main``) is replaced by the
commit ``medmix.lock.json`` (written by ``medmix fetch``; :func:`read_lock`) recorded for it, so a
run reads exactly the fetched snapshot and the commit is recorded in the feature file's metadata
(``commit``) and in the workflow's params (a changed commit reruns that expert only). Unlocked, the
branch is read as is and a warning names the fix (once per model and process).

Remote code (``trust_remote_code``) runs only for a registry entry / bridge that needs it, only
when its config sets ``allow_remote_code: true``, and only at an exact 40-hex commit
(:func:`check_remote_code_pin`): from the hub, ``revision`` must be that commit; from
``local_dir``, the folder must be a Hugging Face cache snapshot, ``.../snapshots/<commit>/``
(what ``huggingface_hub.snapshot_download`` writes), whose commit equals ``revision``.

Every loader refuses a checkpoint that lacks any of the model's tensors
(:func:`refuse_missing_tensors`; only :data:`TOLERATED_MISSING` are let through).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from extractors.base import Extractor, ModelUnavailableError, is_fatal, resolve_device

log = logging.getLogger("medmix.extract")

#: Parameters a checkpoint may lack without changing the embeddings: the BERT pooler (outputs
#: not used: CLS / mean of the last hidden states are) and ViT mask tokens (masked pre-training only).
TOLERATED_MISSING = ("pooler.", "mask_token")

#: Exceptions the hub / transformers / open_clip raise when weights or configs are missing.
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, ImportError)

_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_commit(revision: Any) -> bool:
    """Whether ``revision`` is a full 40-hex git commit (the whole string, no prefix/suffix)."""
    return isinstance(revision, str) and _COMMIT.fullmatch(revision) is not None


# -- the online/offline rule and the lock --------------------------------------------------------
#: The global ``experts.offline`` as the workflow passes it to its jobs (``1``/``0``); unset: offline.
OFFLINE_ENV = "MEDMIX_HF_OFFLINE"
#: Where the lock is read from (default :data:`LOCK_FILE` in the working directory).
LOCK_ENV = "MEDMIX_LOCK_FILE"
#: The lock ``medmix fetch`` writes: model id -> requested revision, resolved commit, files.
LOCK_FILE = "medmix.lock.json"
LOCK_FORMAT = 1
_FALSE = ("0", "false", "no", "off")
_WARNED_UNLOCKED: set[tuple[str, str]] = set()


def offline_mode(options: dict[str, Any] | None = None) -> bool:
    """The one online/offline rule of every loader (see the module docstring).

    ``options["offline"]`` (``experts.settings.<name>.options.offline``, or a bridge's options) if
    set, else ``experts.offline`` (``MEDMIX_HF_OFFLINE``), else true. Offline, ``HF_HUB_OFFLINE=1``
    is set for libraries that import the hub client later.
    """
    value = (options or {}).get("offline")
    if value is None:
        value = os.environ.get(OFFLINE_ENV, "1").strip().lower() not in _FALSE
    offline = bool(value)
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return offline


def lock_path() -> Path:
    """The lock file: ``MEDMIX_LOCK_FILE`` or ``medmix.lock.json`` in the working directory."""
    return Path(os.environ.get(LOCK_ENV) or LOCK_FILE)


_LOCK_CACHE: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}


def read_lock(path: str | Path | None = None) -> dict[str, Any]:
    """The lock as written by ``medmix fetch`` (``{"format": 1, "models": {...}}``); empty if absent.

    A lock that is not JSON or not of this format raises ``ValueError`` naming the file (a damaged
    lock must not silently unpin a run).
    """
    path = Path(path) if path is not None else lock_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {"format": LOCK_FORMAT, "models": {}}
    key = str(path.resolve())
    cached = _LOCK_CACHE.get(key)
    if cached and cached[0] == (stat.st_mtime_ns, stat.st_size):
        return cached[1]
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not a medmix lock file ({err}); rewrite it with `medmix fetch --yes`") from None
    if not isinstance(lock, dict) or lock.get("format") != LOCK_FORMAT or not isinstance(lock.get("models"), dict):
        raise ValueError(f"{path}: not a medmix lock file of format {LOCK_FORMAT}; rewrite it with "
                         "`medmix fetch --yes`")
    _LOCK_CACHE[key] = ((stat.st_mtime_ns, stat.st_size), lock)
    return lock


def lock_entry(model_id: str | None, revision: str | None, lock: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The lock's entry for ``model_id`` requested at ``revision`` (None: not locked)."""
    if not model_id:
        return None
    models = (read_lock() if lock is None else lock).get("models", {})
    requested = revision or "main"
    for key in (f"{model_id}@{requested}", str(model_id)):
        entry = models.get(key)
        if isinstance(entry, dict) and entry.get("revision") == requested and is_commit(entry.get("commit")):
            return entry
    return None


def locked_commit(model_id: str | None, revision: str | None, lock: dict[str, Any] | None = None) -> str | None:
    """The commit the lock records for a branch-like ``revision`` of ``model_id`` (None for a pinned
    commit, which needs no lock, or an unlocked revision)."""
    if is_commit(revision):
        return None
    entry = lock_entry(model_id, revision, lock)
    return entry["commit"] if entry else None


def resolve_revision(model_id: str | None, revision: str | None, who: str, setting: str | None = None,
                     warn: bool = True) -> str | None:
    """The revision a loader asks the hub (cache) for: a commit as is, a branch-like revision's locked
    commit, else the revision itself (a warning naming the fix, once per model and process)."""
    if is_commit(revision):
        return revision
    locked = locked_commit(model_id, revision)
    if locked:
        return locked
    key = (str(model_id), str(revision))
    if warn and key not in _WARNED_UNLOCKED:
        _WARNED_UNLOCKED.add(key)
        log.warning("%s: revision %r of %s is not a pinned commit and not in the lock (%s); run `medmix fetch --yes` "
                    "(records the commit it downloads in the lock) or set %s to a 40-hex commit, so that the run "
                    "is reproducible", who, revision, model_id, lock_path(), setting or "the revision")
    return revision


def hub_load_kwargs(model_id: str | None, revision: str | None, source: str, who: str,
                    options: dict[str, Any] | None = None, setting: str | None = None) -> dict[str, Any]:
    """``revision`` / ``local_files_only`` for ``from_pretrained`` / ``hf_hub_download`` /
    ``snapshot_download`` of ``source`` (a hub id or a local folder), by :func:`offline_mode` and
    :func:`resolve_revision`. Every hub loader goes through here."""
    offline = offline_mode(options)
    if os.path.isdir(source):
        return {"revision": None, "local_files_only": True}
    return {"revision": resolve_revision(model_id or source, revision, who, setting), "local_files_only": offline}


def unpacked_dir(model_id: str, commit: str) -> Path:
    """Where ``medmix fetch`` unpacks an archived checkpoint (RadFM's ``pytorch_model.zip``) of one
    commit: ``$HF_HOME/medmix-unpacked/models--<org>--<name>/<commit>/`` (beside the hub cache, not in it)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "medmix-unpacked" / f"models--{model_id.replace('/', '--')}" / commit


def snapshot_commit(local_dir: str) -> str | None:
    """The commit a local folder came from: ``<40-hex>`` of a ``.../snapshots/<40-hex>/`` folder, else None."""
    folder = os.path.realpath(local_dir)
    name, parent = os.path.basename(folder), os.path.basename(os.path.dirname(folder))
    return name if parent == "snapshots" and is_commit(name) else None


def check_remote_code_pin(who: str, revision: Any, local_dir: str | None) -> None:
    """Refuse remote code unless it is pinned to an exact commit (hub and ``local_dir`` alike)."""
    if not is_commit(revision):
        raise ModelUnavailableError(
            f"{who}: remote code runs only at a pinned commit; set revision to the full 40-hex commit whose "
            f"code you reviewed (got {revision!r})")
    if local_dir:
        commit = snapshot_commit(local_dir)
        if commit is None:
            raise ModelUnavailableError(
                f"{who}: local_dir {local_dir!r} does not record the commit it came from; with remote code, "
                "local_dir must be a Hugging Face cache snapshot folder .../snapshots/<40-hex commit>/ "
                "(as huggingface_hub.snapshot_download writes it)")
        if commit != revision:
            raise ModelUnavailableError(
                f"{who}: local_dir {local_dir!r} is snapshot {commit} but revision pins {revision}; "
                "point local_dir at the snapshot of the reviewed commit or update revision after reviewing")


def refuse_missing_tensors(who: str, source: str, missing: list[str] | set[str] | tuple[str, ...],
                           tolerated: tuple[str, ...] = TOLERATED_MISSING) -> list[str]:
    """Raise if a checkpoint lacks tensors of the model (beyond ``tolerated``); returns the tolerated ones.

    ``from_pretrained`` silently initialises tensors a checkpoint lacks (a wrong or partial
    download, another architecture): the model would then run with random weights.
    """
    missing = sorted(missing or [])
    fatal = [k for k in missing if not any(t in k for t in tolerated)]
    if fatal:
        raise ModelUnavailableError(
            f"{who}: the checkpoint at {source!r} lacks {len(fatal)} of the model's tensors (e.g. {fatal[:3]}); "
            "it is another model's checkpoint or is incomplete")
    if missing:
        log.warning("%s: tensors not in the checkpoint (unused here, left initialised): %s", who, missing)
    return missing


def checkpoint_tensor_names(folder: str) -> set[str]:
    """Names of the tensors stored in a model folder's weights (safetensors headers, or a ``.bin``
    read with ``weights_only=True`` and mmap); ModelUnavailableError if it holds no weights file."""
    import json

    st_index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(st_index):
        with open(st_index, encoding="utf-8") as fh:
            return set(json.load(fh)["weight_map"])
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as fh:
            return set(fh.keys())
    legacy = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(legacy):
        import torch

        return set(torch.load(legacy, map_location="cpu", weights_only=True, mmap=True))
    raise ModelUnavailableError(f"{folder} holds no model.safetensors or pytorch_model.bin to check")


def refuse_incomplete_folder(model: Any, folder: str, who: str) -> None:
    """Refuse a loaded ``transformers`` model whose folder lacks any of its tensors (for loaders that
    call ``from_pretrained`` themselves, e.g. sentence-transformers); names may carry the base-model prefix."""
    names = checkpoint_tensor_names(folder)
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    missing = [k for k in model.state_dict() if k not in names and prefix + k not in names
               and not (k.startswith(prefix) and k[len(prefix):] in names)]
    refuse_missing_tensors(who, folder, missing)


def load_state_complete(module: Any, state: dict[str, Any], who: str, source: str) -> None:
    """``module.load_state_dict(state)``, refusing missing or unexpected tensors as unusable weights."""
    result = module.load_state_dict(state, strict=False)
    refuse_missing_tensors(who, source, result.missing_keys, tolerated=())
    if result.unexpected_keys:
        raise ModelUnavailableError(
            f"{who}: the checkpoint at {source!r} has {len(result.unexpected_keys)} tensors the model does not "
            f"(e.g. {sorted(result.unexpected_keys)[:3]}); it is another model's checkpoint")


def pretrained_complete(loader: Any, source: str, who: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(source, **kwargs)`` refusing a checkpoint with missing tensors."""
    model, info = loader.from_pretrained(source, output_loading_info=True, **kwargs)
    refuse_missing_tensors(who, source, info.get("missing_keys") or [])
    return model


def raise_unless_missing(err: Exception) -> None:
    """Re-raise errors that are not about missing weights (out of memory, CUDA failures: :func:`is_fatal`)."""
    if is_fatal(err):
        raise err


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword for a weight dtype (``dtype``: transformers >= 4.56, the declared minimum)."""
    return {} if dtype is None else {"dtype": dtype}


class HubExpert(Extractor):
    """An :class:`Extractor` whose weights come from the Hugging Face hub (or a local copy)."""

    #: Extra sentence appended to the "model unavailable" message (e.g. gated-model hints).
    availability_note: str = ""
    #: Whether the hub gates the weights (licence to accept on the model page, then ``HF_TOKEN``).
    gated: bool = False

    def offline(self) -> bool:
        """Whether only local files may be read (:func:`offline_mode` of this expert's options)."""
        return offline_mode(self.settings.options)

    def unavailable(self, error: Exception) -> ModelUnavailableError:
        base = super().unavailable(error)
        return ModelUnavailableError(f"{base} {self.availability_note}".strip())

    def remote_code(self) -> bool:
        """``trust_remote_code``: only where the model needs it and the config allows it."""
        if not self.spec.trust_remote_code:
            return False
        if not self.settings.allow_remote_code:
            raise ModelUnavailableError(
                f"expert {self.spec.name!r} ({self.settings.model_id}) needs trust_remote_code; enable it with "
                f"experts.settings.{self.spec.name}.allow_remote_code: true after reviewing the model's code"
            )
        check_remote_code_pin(f"expert {self.spec.name!r} ({self.settings.model_id})", self.settings.revision,
                              self.settings.local_dir)
        return True

    def hub_revision(self, source: str) -> str | None:
        """The revision to read from the hub (None for a local folder): a pinned commit, the lock's
        commit for a branch-like revision, else the revision itself with a warning naming the fix
        (once per expert, not per file it reads)."""
        if os.path.isdir(source):
            return None
        revision = self.settings.revision
        if is_commit(revision):
            return revision
        locked = locked_commit(self.settings.model_id, revision)
        if locked:
            return locked
        if not getattr(self, "_warned_revision", False):
            self._warned_revision = True
            log.warning("expert %s: revision %r of %s is not a pinned commit; run `medmix fetch --experts %s --yes` "
                        "(downloads it and records the commit in %s) or set experts.settings.%s.revision to the "
                        "40-hex commit you downloaded, so that the run is reproducible",
                        self.spec.name, revision, source, self.spec.name, lock_path(), self.spec.name)
        return revision

    def resolved_commit(self) -> str | None:
        """The commit the weights are read at, when known: a pinned revision, the lock's commit for a
        branch-like one, or the commit of a ``local_dir`` that is a hub snapshot folder."""
        s = self.settings
        if s.local_dir:
            return snapshot_commit(s.local_dir) if os.path.isdir(s.local_dir) else None
        return s.revision if is_commit(s.revision) else locked_commit(s.model_id, s.revision)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        commit = self.resolved_commit()
        if commit:
            meta["commit"] = commit
        return meta

    def load_kwargs(self, source: str) -> dict[str, Any]:
        """``revision`` / ``local_files_only`` of ``source`` for ``from_pretrained`` / ``hf_hub_download`` /
        ``snapshot_download``: this expert's :func:`hub_load_kwargs` (its own once-per-expert warning)."""
        return {"revision": self.hub_revision(source), "local_files_only": self.offline()}

    def hub_kwargs(self) -> dict[str, Any]:
        """``revision`` / ``local_files_only`` / ``trust_remote_code`` for ``from_pretrained``."""
        return {**self.load_kwargs(self.model_source()), "trust_remote_code": self.remote_code()}

    def from_pretrained(self, loader: Any, **kwargs: Any) -> Any:
        """``loader.from_pretrained(model_source(), ...)``; missing weights -> ModelUnavailableError."""
        try:
            source = self.model_source()
            return loader.from_pretrained(source, **self.hub_kwargs(), **kwargs)
        except ModelUnavailableError:
            raise
        except LOAD_ERRORS as err:
            raise_unless_missing(err)
            raise self.unavailable(err) from err

    def load_weights(self, loader: Any, **kwargs: Any) -> Any:
        """A ``transformers`` model whose every parameter came from the checkpoint.

        ``from_pretrained`` silently initialises tensors a checkpoint lacks (a wrong or partial
        download, another architecture): the expert would then embed with random weights. Missing
        tensors fail the job; only a few that no embedding here uses (``TOLERATED_MISSING``) are
        logged instead.
        """
        model, info = self.from_pretrained(loader, output_loading_info=True, **kwargs)
        refuse_missing_tensors(f"expert {self.spec.name!r} ({self.settings.model_id})", self.model_source(),
                               info.get("missing_keys") or [])
        return model

    def snapshot_dir(self) -> str:
        """A local folder holding the model repository (``local_dir`` or the pinned hub snapshot)."""
        source = self.model_source()
        if os.path.isdir(source):
            return source
        kwargs = self.load_kwargs(source)
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(repo_id=source, **kwargs)
        except LOAD_ERRORS as err:
            raise self.unavailable(err) from err

    # -- inference ----------------------------------------------------------------------
    def pick_device(self) -> str:
        self.device = resolve_device(self.settings.device)
        return self.device

    def on_cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def to_device(self, tensor):
        """``tensor`` on the model's device; on CUDA through pinned host memory, copied
        asynchronously (the next host-side step overlaps the transfer)."""
        if self.on_cuda():
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def autocast(self):
        """bf16 autocast on CUDA, nothing on CPU (float32 there)."""
        import torch

        if self.on_cuda():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
