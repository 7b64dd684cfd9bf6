"""In-memory tensors of one dataset's cached embeddings, keyed by modality name."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from medmix.cohort import Cohort
from medmix.features import FeatureBundle


@dataclass
class TensorData:
    """Aligned embeddings, masks and labels; every tensor's first axis is the sample axis.

    - ``x[m][k]``: float32 ``[N, d_k]`` of expert ``k`` of modality ``m`` (zeros where absent);
    - ``mask[m]``: bool ``[N, K_m]``, expert presence;
    - ``teacher[m]`` / ``teacher_mask[m]``: optional teacher embedding ``[N, d_T]`` and ``[N]``;
    - ``y``: float32 ``[N, C]`` (NaN = unknown label);
    - ``groups``: optional patient id per sample (folds inside the training split keep a patient together).
    """

    sample_ids: list[str]
    task: str
    labels: list[str]
    x: dict[str, list[torch.Tensor]]
    mask: dict[str, torch.Tensor]
    expert_names: dict[str, list[str]]
    expert_roles: dict[str, list[str]]
    y: torch.Tensor
    split: np.ndarray
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    groups: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.sample_ids)

    @property
    def modalities(self) -> list[str]:
        return list(self.x)

    def modality_mask(self) -> torch.Tensor:
        """bool ``[N, M]``: modality present = any of its experts present."""
        return torch.stack([self.mask[m].any(dim=1) for m in self.modalities], dim=1)

    def dims(self) -> dict[str, list[int]]:
        return {m: [int(t.shape[1]) for t in xs] for m, xs in self.x.items()}

    def teacher_dims(self) -> dict[str, int]:
        return {m: int(t.shape[1]) for m, t in self.teacher.items()}

    def subset(self, index) -> TensorData:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return replace(
            self,
            sample_ids=[self.sample_ids[i] for i in idx.tolist()],
            x={m: [t[idx] for t in xs] for m, xs in self.x.items()},
            mask={m: t[idx] for m, t in self.mask.items()},
            y=self.y[idx],
            split=self.split[idx.numpy()],
            teacher={m: t[idx] for m, t in self.teacher.items()},
            teacher_mask={m: t[idx] for m, t in self.teacher_mask.items()},
            groups=None if self.groups is None else self.groups[idx.numpy()],
        )

    def split_part(self, name: str) -> TensorData:
        return self.subset(np.flatnonzero(self.split == name))

    def with_mask(self, mask: dict[str, torch.Tensor]) -> TensorData:
        """A view with other expert masks; masked experts' embeddings are zeroed too."""
        x = {m: [t * mask[m][:, k : k + 1].to(t.dtype) for k, t in enumerate(xs)] for m, xs in self.x.items()}
        return replace(self, x=x, mask=mask)


def from_bundle(cohort: Cohort, bundle: FeatureBundle) -> TensorData:
    if bundle.sample_ids != cohort.sample_ids:
        raise ValueError(f"dataset {cohort.name!r}: feature bundle and cohort are not aligned")
    x, mask, names, roles = {}, {}, {}, {}
    for m, blocks in bundle.experts.items():
        x[m] = [torch.from_numpy(np.ascontiguousarray(b.x)) for b in blocks]
        mask[m] = torch.from_numpy(np.stack([b.mask for b in blocks], axis=1))
        names[m] = [b.name for b in blocks]
        roles[m] = [b.role for b in blocks]
    teacher = {m: torch.from_numpy(np.ascontiguousarray(b.x)) for m, b in bundle.teachers.items()}
    tmask = {m: torch.from_numpy(b.mask.copy()) for m, b in bundle.teachers.items()}
    y = torch.from_numpy(np.array(cohort.label_matrix(), dtype=np.float32))
    split = cohort.frame["split"].astype(str).to_numpy()
    groups = cohort.frame["patient_id"].astype(str).to_numpy()
    return TensorData(bundle.sample_ids, cohort.task, cohort.labels, x, mask, names, roles, y, split, teacher, tmask,
                      groups)


@dataclass
class Standardizer:
    """Per-feature z-scoring of every expert's embeddings, fit on present training rows only."""

    mean: dict[str, list[torch.Tensor]]
    std: dict[str, list[torch.Tensor]]
    CLIP = 10.0

    @classmethod
    def fit(cls, train: TensorData, eps: float = 1e-4) -> Standardizer:
        mean, std = {}, {}
        for m, xs in train.x.items():
            mean[m], std[m] = [], []
            for k, t in enumerate(xs):
                rows = t[train.mask[m][:, k]]
                if rows.shape[0] < 2:
                    mean[m].append(torch.zeros(t.shape[1]))
                    std[m].append(torch.ones(t.shape[1]))
                    continue
                mean[m].append(rows.mean(0))
                sd = rows.std(0)
                # A feature (nearly) constant in training carries no scale: leave it unscaled.
                std[m].append(torch.where(sd < eps, torch.ones_like(sd), sd))
        return cls(mean, std)

    def apply(self, data: TensorData) -> TensorData:
        """Standardised copy clipped to ±``CLIP`` standard deviations; absent rows stay exactly zero."""
        x = {
            m: [
                ((t - self.mean[m][k]) / self.std[m][k]).clamp(-self.CLIP, self.CLIP)
                * data.mask[m][:, k : k + 1].to(t.dtype)
                for k, t in enumerate(xs)
            ]
            for m, xs in data.x.items()
        }
        return replace(data, x=x)

    def save(self, path: str | Path) -> Path:
        """Write the scaling as safetensors (atomically); :meth:`load` reads it back."""
        from safetensors.torch import save_file

        from medmix.store.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(self.tensors(), str(tmp), metadata={"format": "medmix-standardizer/1"})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Standardizer:
        from safetensors.torch import load_file

        mean: dict[str, dict[int, torch.Tensor]] = {}
        std: dict[str, dict[int, torch.Tensor]] = {}
        for key, tensor in load_file(str(path)).items():
            which, rest = key.split(".", 1)
            modality, k = rest.rsplit(".", 1)
            (mean if which == "mean" else std).setdefault(modality, {})[int(k)] = tensor
        order = lambda d: {m: [v[k] for k in sorted(v)] for m, v in d.items()}  # noqa: E731
        return cls(order(mean), order(std))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor map for safetensors (``mean.<modality>.<k>``, ``std.<modality>.<k>``)."""
        out = {}
        for m in self.mean:
            for k, (mu, sd) in enumerate(zip(self.mean[m], self.std[m], strict=True)):
                out[f"mean.{m}.{k}"], out[f"std.{m}.{k}"] = mu.contiguous(), sd.contiguous()
        return out
