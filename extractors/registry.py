"""Decorator registry of expert extractors.

Each expert module declares an :class:`ExpertSpec` with its own metadata and registers its
extractor class with :func:`register_expert`. Modules import their heavy libraries lazily
(inside ``load``), so importing every module to enumerate the registry stays cheap and a job
for one expert never pulls in another expert's dependencies.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extractors.base import Extractor

MODALITY_KINDS = ("image", "text", "timeseries", "volume", "slide", "tabular")
ROLES = ("biomed", "general", "rag", "teacher")
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class ExpertSpec:
    """Metadata an expert declares about itself (the registry's single source of truth)."""

    name: str
    kinds: tuple[str, ...]
    role: str
    dim: int
    hub_id: str | None = None
    revision: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    offline: bool = False
    description: str = ""
    paper_name: str | None = None
    gpu: bool = False
    #: Host memory (MB) one extraction job needs (the job's ``mem_mb`` resource).
    mem_mb: int = 2000
    environment: str = "main"
    #: GPU memory (MB) the model needs at ``batch_sizes["cuda"]`` (0: CPU-only expert).
    gpu_mem_mb: int = 0
    #: Default batch size per device type (``cpu``, ``cuda``); ``experts.settings.<name>.batch_size``
    #: overrides it. Batch composition never changes the embeddings, so neither does this.
    batch_sizes: dict[str, int] = field(default_factory=lambda: {"cpu": 32, "cuda": 64})
    #: Wall-clock minutes one unsharded job over ~10k samples may take (the job's ``runtime``).
    runtime_min: int = 60
    #: Deployed parameters (Table E6): 0 for a non-neural expert; None: not declared.
    params: int | None = None
    #: Inference FLOPs per sample (Table E6); None: not counted / not declared (say why in ``cost_note``).
    flops_per_sample: float | None = None
    #: Where ``params`` / ``flops_per_sample`` come from (model card, config, formula) or why they are absent.
    cost_note: str = ""

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in MODALITY_KINDS]
        if bad:
            raise ValueError(f"expert {self.name!r}: unknown modality kind(s) {bad}; known: {MODALITY_KINDS}")
        if self.role not in ROLES:
            raise ValueError(f"expert {self.name!r}: role {self.role!r} not in {ROLES}")
        bad_sizes = {k: v for k, v in self.batch_sizes.items() if k not in DEVICE_TYPES or int(v) < 1}
        if bad_sizes:
            raise ValueError(f"expert {self.name!r}: batch_sizes {bad_sizes}: keys must be {DEVICE_TYPES}, values >= 1")

    def cost(self) -> dict[str, Any]:
        """The declared deployment cost (a plain dict for the tables job)."""
        return {"params": self.params, "flops_per_sample": self.flops_per_sample, "cost_note": self.cost_note}

    def batch_size_for(self, device: str) -> int:
        """The declared batch size for ``device`` (``cuda:1`` counts as ``cuda``)."""
        kind = str(device).split(":", 1)[0]
        return int(self.batch_sizes.get(kind, self.batch_sizes.get("cpu", 32)))


_REGISTRY: dict[str, type[Extractor]] = {}
_DISCOVERED = False


def register_expert(spec: ExpertSpec):
    """Class decorator: attach ``spec`` to an :class:`Extractor` subclass and register it."""

    def wrap(cls):
        if spec.name in _REGISTRY and _REGISTRY[spec.name] is not cls:
            raise ValueError(f"expert {spec.name!r} registered twice ({_REGISTRY[spec.name]} and {cls})")
        cls.spec = spec
        _REGISTRY[spec.name] = cls
        return cls

    return wrap


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import extractors

    for info in pkgutil.walk_packages(extractors.__path__, prefix="extractors."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_") or leaf in {"registry", "base", "runner", "inputs", "job"} or ".knowledge" in info.name:
            continue
        importlib.import_module(info.name)
    _DISCOVERED = True


def list_experts() -> list[str]:
    """Names of every registered expert, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_expert_class(name: str) -> type[Extractor]:
    """The extractor class registered under ``name``; unknown names list the known ones."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown expert {name!r}; known experts: {', '.join(sorted(_REGISTRY))}") from None


def get_spec(name: str) -> ExpertSpec:
    return get_expert_class(name).spec


def create_extractor(name: str, settings: dict[str, Any] | None = None) -> Extractor:
    """Factory: instantiate the extractor ``name`` with runtime ``settings`` (not yet loaded)."""
    return get_expert_class(name)(settings or {})


def extra_source_files(name: str) -> list[str]:
    """Absolute paths of the ``extra_sources`` the expert's class (or a base) declares."""
    root = Path(__file__).resolve().parent
    files: list[str] = []
    for klass in inspect.getmro(get_expert_class(name)):
        for extra in vars(klass).get("extra_sources", ()):
            path = root / extra
            if not path.is_file():
                raise FileNotFoundError(f"expert {name!r}: extra source {extra!r} not found in {root}")
            if str(path) not in files:
                files.append(str(path))
    return files


def expert_module(name: str) -> str:
    """The module that registers expert ``name`` (the root of its code closure)."""
    return get_expert_class(name).__module__
