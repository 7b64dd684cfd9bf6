"""Missing-modality protocols: how modalities are removed at train or test time.

A protocol maps expert masks to new masks with a seeded generator. Train protocols are applied
per batch by the trainer (augmentation by masking); test protocols once to the evaluation data.
New kinds register with :func:`register_protocol_kind`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MaskDict = dict[str, torch.Tensor]
#: Seed offset of the protocol draw that pre-fits see (:func:`prefit_view`); test-time draws use
#: another offset (``medmix.pipeline.fit.TEST_PROTOCOL_SEED``).
PREFIT_SEED = 7_000_003
_KINDS: dict[str, Callable[..., Callable[[MaskDict, torch.Generator], MaskDict]]] = {}


def register_protocol_kind(name: str):
    def wrap(fn):
        _KINDS[name] = fn
        return fn

    return wrap


@dataclass(frozen=True)
class Protocol:
    """A named protocol: ``kind`` plus its parameters (e.g. ``{"modality": "note", "p": 0.5}``)."""

    name: str
    kind: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> Protocol:
        """``Protocol(name, spec["kind"], rest of spec)`` (a config entry ``{kind: ..., **params}``)."""
        spec = dict(spec)
        return cls(name, spec.pop("kind", "none"), spec)

    def apply(self, mask: MaskDict, generator: torch.Generator) -> MaskDict:
        try:
            fn = _KINDS[self.kind]
        except KeyError:
            raise KeyError(f"protocol {self.name!r}: unknown kind {self.kind!r}; known: {sorted(_KINDS)}") from None
        return fn(**self.params)(mask, generator)

    @property
    def is_identity(self) -> bool:
        return self.kind == "none"

    def prefit_mask(self, mask: MaskDict) -> MaskDict:
        """The one draw of this protocol that a method's pre-fits see (:func:`prefit_view`)."""
        if self.is_identity:
            return mask
        return self.apply(mask, torch.Generator().manual_seed(self.seed(PREFIT_SEED)))

    def seed(self, offset: int = 0) -> int:
        """A generator seed from the protocol's name, kind and parameters (never its position in
        config): reordering or adding protocols changes no mask, and a protocol's masks are the same
        for every method."""
        text = json.dumps([self.name, self.kind, self.params], sort_keys=True, default=str)
        return offset + int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big")


class ProtocolView:
    """Base of a protocol applied through a method's own view of the data (e.g. AdaCoMed's teacher
    slots, ``large_ref``'s one modality): subclasses define :meth:`apply`; the pre-fit draw is
    seeded by the wrapped protocol, as :meth:`Protocol.prefit_mask`."""

    protocol: Protocol

    @property
    def name(self) -> str:
        return self.protocol.name

    @property
    def is_identity(self) -> bool:
        return self.protocol.is_identity

    def apply(self, mask: MaskDict, generator: torch.Generator) -> MaskDict:
        raise NotImplementedError

    def prefit_mask(self, mask: MaskDict) -> MaskDict:
        if self.is_identity:
            return mask
        return self.apply(mask, torch.Generator().manual_seed(self.protocol.seed(PREFIT_SEED)))


def prefit_view(data, protocol: Protocol | ProtocolView):
    """What a train-time ``protocol`` leaves of ``data`` (a :class:`~medmix.data.TensorData`) for
    every model fitted *before or outside* the per-epoch training loop: the feature standardiser,
    probes, fold probes, expert selection, pre-training stages.

    No such model may read values the protocol removes (issue 27's leak). The trainer redraws the
    protocol every epoch, so a network sees each row's values in some epochs when ``p < 1``; a
    pre-fit sees one seeded draw of the same protocol (:meth:`Protocol.prefit_mask`), with the
    removed experts' embeddings zeroed. The identity protocol returns ``data`` itself.
    """
    if protocol.is_identity:
        return data
    from dataclasses import replace

    view = data.with_mask(protocol.prefit_mask(data.mask))
    kept = {m: view.teacher_mask[m] & view.mask[m].any(1) for m in view.teacher_mask if m in view.mask}
    teacher = {m: t * kept[m][:, None].to(t.dtype) if m in kept else t for m, t in view.teacher.items()}
    return replace(view, teacher=teacher, teacher_mask={**view.teacher_mask, **kept})


def _drop(mask: MaskDict, modalities: list[str], p: float, generator: torch.Generator) -> MaskDict:
    out = dict(mask)
    for m in modalities:
        if m not in mask:
            raise KeyError(f"protocol drops unknown modality {m!r}; modalities: {sorted(mask)}")
        n = mask[m].shape[0]
        keep = torch.rand(n, generator=generator) >= p
        out[m] = mask[m] & keep[:, None].to(mask[m].device)
    return out


@register_protocol_kind("none")
def _none():
    return lambda mask, generator: dict(mask)


@register_protocol_kind("drop_one")
def _drop_one(modality: str, p: float):
    """Remove one modality from each sample with probability ``p``."""
    return lambda mask, generator: _drop(mask, [modality], p, generator)


@register_protocol_kind("random_drop")
def _random_drop(p: float):
    """Remove every modality independently with probability ``p``."""
    return lambda mask, generator: _drop(mask, sorted(mask), p, generator)


def parse_protocols(section: dict[str, Any] | None) -> list[Protocol]:
    """``{"name": {"kind": ..., **params}}`` -> protocols; ``none`` is always first."""
    out = [Protocol("none")]
    for name, spec in (section or {}).items():
        if name == "none":
            continue
        spec = dict(spec)
        kind = spec.pop("kind")
        if kind not in _KINDS:
            raise KeyError(f"protocol {name!r}: unknown kind {kind!r}; known: {sorted(_KINDS)}")
        out.append(Protocol(name, kind, spec))
    return out


@register_protocol_kind("missing_one")
def _missing_one(modalities: list[str], p: float):
    """CP-IMoE's missing-rate protocol: exactly ``round(p · N)`` samples, drawn at random, each lose
    one modality chosen uniformly from ``modalities`` (one name: the primary / secondary setting;
    several: the random setting). The reference drops a fixed fraction of each batch."""
    if not modalities:
        raise ValueError("missing_one: `modalities` must name at least one modality")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"missing_one: p must be in [0, 1], got {p}")

    def apply(mask: MaskDict, generator: torch.Generator) -> MaskDict:
        unknown = [m for m in modalities if m not in mask]
        if unknown:
            raise KeyError(f"protocol drops unknown modalities {unknown}; modalities: {sorted(mask)}")
        n = next(iter(mask.values())).shape[0]
        chosen = torch.randperm(n, generator=generator)[: int(round(float(p) * n))]
        which = torch.randint(len(modalities), (chosen.shape[0],), generator=generator)
        out = dict(mask)
        for j, m in enumerate(modalities):
            drop = torch.zeros(n, dtype=torch.bool)
            drop[chosen[which == j]] = True
            out[m] = mask[m] & ~drop[:, None].to(mask[m].device)
        return out

    return apply
