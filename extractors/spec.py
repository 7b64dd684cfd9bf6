"""What an expert declares about itself: :class:`ExpertSpec` (the registry's single source of truth)
and the vocabularies it is checked against. Imported by :mod:`extractors.base` and
:mod:`extractors.registry` (which re-exports it), so neither imports the other's module for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
