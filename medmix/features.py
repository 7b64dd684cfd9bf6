"""Assemble cached expert embeddings into aligned arrays for one dataset and committee."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmix.store import FeatureStoreError, check_identity, read_features


@dataclass
class ExpertBlock:
    """One expert's embeddings aligned to the cohort order."""

    name: str
    role: str
    x: np.ndarray  # float32 [N, d]; zero rows where absent
    mask: np.ndarray  # bool [N]

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])


@dataclass
class FeatureBundle:
    """Every modality's committee (and optional teacher) for one dataset, keyed by modality name."""

    sample_ids: list[str]
    experts: dict[str, list[ExpertBlock]]
    teachers: dict[str, ExpertBlock] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.experts)

    def modality_mask(self, modality: str) -> np.ndarray:
        """True where at least one expert of ``modality`` is present."""
        return np.any([b.mask for b in self.experts[modality]], axis=0)


def align_block(path: str | Path, sample_ids: list[str], expected: dict[str, Any] | None, role: str) -> ExpertBlock:
    """Read one feature file and reorder it to ``sample_ids``; every id must be there exactly once."""
    ff = read_features(path)
    if expected:
        check_identity(path, ff.metadata, expected)
    index = {sid: i for i, sid in enumerate(ff.sample_ids)}
    missing = [s for s in sample_ids if s not in index]
    extra = set(index) - set(sample_ids)
    if missing or extra:
        raise FeatureStoreError(
            f"{path}: sample ids do not match the cohort ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(extra)} not in the cohort, e.g. {sorted(extra)[:3]}); rerun its extraction"
        )
    order = np.fromiter((index[s] for s in sample_ids), dtype=np.int64, count=len(sample_ids))
    name = ff.metadata.get("extractor", Path(path).stem)
    return ExpertBlock(name, role, ff.embeddings[order], ff.present[order])


def assemble(
    sample_ids: list[str],
    committee: dict[str, list[dict[str, Any]]],
    teachers: dict[str, dict[str, Any]] | None = None,
) -> FeatureBundle:
    """Build a :class:`FeatureBundle`.

    ``committee`` maps modality -> list of ``{"path", "role", "expected"}`` (``expected`` holds
    the identity fields the config resolves for the expert); ``teachers`` maps modality -> one
    such dict.
    """
    if len(set(sample_ids)) != len(sample_ids):
        raise FeatureStoreError("duplicate sample ids in the cohort")
    errors: list[str] = []

    def block(entry: dict[str, Any], role: str) -> ExpertBlock | None:
        try:
            return align_block(entry["path"], sample_ids, entry.get("expected"), role)
        except FeatureStoreError as err:  # every bad cache is named at once
            errors.append(str(err))
            return None

    experts = {m: [block(e, e.get("role", "general")) for e in entries] for m, entries in committee.items()}
    for m, blocks in experts.items():
        if not blocks:
            raise FeatureStoreError(f"modality {m!r} has an empty committee")
    tblocks = {m: block(t, "teacher") for m, t in (teachers or {}).items()}
    if errors:
        raise FeatureStoreError(
            f"{len(errors)} feature file(s) cannot be used:\n" + "\n".join(f"- {e}" for e in errors)
        )
    return FeatureBundle(list(sample_ids), experts, tblocks)
