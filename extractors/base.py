"""Base class every expert extractor implements."""

from __future__ import annotations

import errno
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from extractors.spec import ExpertSpec


class InputError(ValueError):
    """A sample's input cannot be used: the sample is recorded as absent with this reason."""


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be found locally and the hub cannot be reached."""


class ExtractionFailedError(RuntimeError):
    """Too many of a job's inputs failed: no feature file is written (see ``run_extraction``)."""


#: RuntimeError messages of the accelerator stack or the memory allocator (torch's CPU allocator
#: says "can't allocate memory"): they concern the machine, never one input.
_FATAL_MESSAGE = re.compile(
    r"\bcu(da|dnn|blas)|out of memory|(can't|cannot) allocate memory|not enough memory", re.IGNORECASE
)


def is_fatal(err: BaseException | None) -> bool:
    """Whether ``err`` must fail the whole job instead of making one sample absent.

    Fatal: anything that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``), out of
    memory (``MemoryError``, ``torch.OutOfMemoryError``, an ``OSError`` with ``ENOMEM``), CUDA /
    cuDNN / cuBLAS and allocator failures (a ``RuntimeError`` whose message names them), missing
    weights (:class:`ModelUnavailableError`), and any error raised *from* one of these (``raise
    InputError(...) from err`` around an out-of-memory error is still fatal). Everything else is
    about one input and is isolated by the runner.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if not isinstance(err, Exception) or isinstance(err, (MemoryError, ModelUnavailableError)):
            return True
        if isinstance(err, OSError) and err.errno == errno.ENOMEM:
            return True
        torch = sys.modules.get("torch")  # not imported -> no torch error can exist
        oom = (getattr(torch, "OutOfMemoryError", None)
               or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
        if isinstance(oom, type) and isinstance(err, oom):
            return True
        if isinstance(err, RuntimeError) and _FATAL_MESSAGE.search(str(err)):
            return True
        err = err.__cause__
    return False


@dataclass
class ExtractorSettings:
    """Runtime settings of one extractor.

    :data:`EMBEDDING_SETTINGS` change the embeddings (they are the extraction jobs' params), as does
    the dataset's ``input_schema`` (part of the input fingerprint); :data:`RUNTIME_SETTINGS` (where
    and how fast to run) do not.
    """

    model_id: str | None = None
    revision: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    local_dir: str | None = None
    batch_size: int = 32
    device: str = "auto"
    num_workers: int = 0
    allow_remote_code: bool = False
    #: expert-specific extras (e.g. a RAG index folder, a tabular width) set by the workflow.
    options: dict[str, Any] = field(default_factory=dict)
    #: the modality's input schema recorded in the dataset's input view (series variables, table
    #: columns and categories); it changes the embeddings and is recorded in the feature file.
    input_schema: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(cls, spec: ExpertSpec, overrides: dict[str, Any] | None) -> ExtractorSettings:
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"expert {spec.name!r}: unknown setting(s) {sorted(unknown)}")
        pre = {**spec.preprocessing, **overrides.pop("preprocessing", {})}
        out = cls(model_id=spec.hub_id, revision=spec.revision, preprocessing=pre)
        for key, value in overrides.items():
            setattr(out, key, value)
        return out


#: The expert settings (``experts.settings.<name>``) that change the embeddings: every extraction
#: job's params (a change reruns the expert's jobs) and the feature file's identity.
EMBEDDING_SETTINGS = ("model_id", "revision", "preprocessing")
#: The other settings a config may give: where and how fast to run (no embedding changes).
RUNTIME_SETTINGS = tuple(f for f in ExtractorSettings.__dataclass_fields__
                         if f not in (*EMBEDDING_SETTINGS, "input_schema"))


def fetch_hint(expert: str | None = None, setting: str | None = None) -> str:
    """The commands that make a missing model available (every "model unavailable" message ends so).

    ``expert``: the registered expert whose models to fetch (``medmix fetch --experts <name>``);
    ``setting``: the config key of its ``local_dir`` (default ``experts.settings.<expert>``).
    """
    only = f" --experts {expert}" if expert else ""
    setting = setting or (f"experts.settings.{expert}" if expert else None)
    text = (f"Download it into the Hugging Face cache (HF_HOME) with `medmix fetch{only} --yes` (the same as "
            f"`python -m extractors.fetch{only} --yes`; `medmix fetch --yes` fetches every model of the configured "
            "profile and records the commits in medmix.lock.json), then run again")
    if setting:
        text += f"; or set {setting}.local_dir in config.yaml to a folder holding the weights"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        text += (" (jobs read only the cache: experts.offline is true or HF_HUB_OFFLINE=1 is set; "
                 "experts.offline: false with HF_HUB_OFFLINE unset lets them download on demand)")
    return text + "."


def resolve_device(requested: str = "auto") -> str:
    """``auto`` picks CUDA when available, else CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Extractor:
    """An expert: ``load`` once, then ``prepare`` each input and ``embed_batch`` the prepared ones.

    ``prepare`` runs on CPU (possibly in DataLoader workers) and raises :class:`InputError` for
    an unusable input; ``embed_batch`` returns a float32 array of shape ``[len(batch), dim]``.
    """

    spec: ClassVar[ExpertSpec]
    # Files inside ``extractors/`` that decide the embeddings but are never imported (e.g. a worker
    # script run in its own environment). Imported modules need no listing: the workflow follows
    # the closure of the expert module's imports (medmix.plan.code_closure).
    extra_sources: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: dict[str, Any] | None = None):
        self.settings = ExtractorSettings.resolve(self.spec, settings)
        self.device = "cpu"

    # -- to implement -------------------------------------------------------------------
    def load(self) -> None:
        """Load weights (no-op for weight-free experts)."""

    def prepare(self, value: Any) -> Any:
        raise NotImplementedError

    def embed_batch(self, batch: list[Any]) -> np.ndarray:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.spec.dim

    def sort_key(self, prepared: Any) -> int:
        """Batches are formed in order of this key (e.g. text length) to limit padding."""
        return 0

    def metadata(self) -> dict[str, Any]:
        """Output-affecting facts recorded in the feature file's metadata."""
        s = self.settings
        meta = {
            "extractor": self.spec.name,
            "role": self.spec.role,
            "model_id": s.model_id,
            "revision": s.revision,
            "dim": self.dim,
            "preprocessing": s.preprocessing,
        }
        if s.input_schema:
            meta["input_schema"] = s.input_schema
        return meta

    def model_source(self) -> str:
        """Where to load weights from: ``local_dir`` if set, else the hub id (offline-checked)."""
        s = self.settings
        if s.local_dir:
            if not os.path.isdir(s.local_dir):
                raise ModelUnavailableError(
                    f"expert {self.spec.name!r}: local_dir {s.local_dir!r} does not exist"
                )
            return s.local_dir
        if not s.model_id:
            raise ModelUnavailableError(f"expert {self.spec.name!r}: no model_id and no local_dir")
        return s.model_id

    def unavailable(self, error: Exception) -> ModelUnavailableError:
        s = self.settings
        return ModelUnavailableError(
            f"expert {self.spec.name!r} needs model {s.model_id!r} at revision {s.revision!r}, which could "
            f"not be loaded ({type(error).__name__}: {error}). {fetch_hint(self.spec.name)} "
            "Or switch to the offline committee with experts.profile: demo."
        )
