"""Training-only teacher–student distillation (MedMIX §3.5).

Per modality ``m`` with a teacher: ``L(m) = L_cos(m) + λ_RKD · L_RKD(m)`` over the samples of the
batch where the modality *and* its teacher embedding are available, and
``L_distill = Σ_m L(m)`` (a modality with no available sample contributes 0).

- ``L_cos = 1 − cos(z(m), z_T(m))``, averaged over available samples; ``z_T`` is the teacher
  embedding projected to the shared width by a learned linear head.
- ``L_RKD``: distance-wise relational KD (Park et al., CVPR 2019): pairwise Euclidean distances
  among the available samples (pairs ``i < j``), each side divided by its own mean over those
  pairs, compared with the Huber (smooth-L1, δ = 1) loss averaged over the pairs. The teacher side
  uses the frozen *raw* teacher embeddings (distance-wise RKD does not need equal widths, and the
  raw space is the teacher's own relational structure); fewer than two available samples give 0.
- The weight ``λ_D(t)`` ramps linearly from 0 at epoch 0 to ``λ_D^max`` at epoch ``T_D``.

Availability enters as 0/1 weights (no boolean indexing): no host synchronisation on GPUs, and
whatever finite values unavailable rows hold cannot change the loss.

The teacher side of ``L_RKD`` does not depend on the model, so :class:`TeacherDistances` can
compute it once for the whole training split and give each batch its rows' block (the same
distances up to float rounding of the larger Gram matmul; on ``bench_trainer.py``'s shapes the
per-batch teacher Gram matmuls were ≈ 4 % of a MedMIX fit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def distill_weight(epoch: int, max_weight: float, ramp_epochs: int) -> float:
    """``λ_D(epoch) = max_weight · min(1, epoch / ramp_epochs)`` (constant when ``ramp_epochs`` is 0)."""
    if ramp_epochs <= 0:
        return float(max_weight)
    return float(max_weight) * min(1.0, epoch / ramp_epochs)


def _weights(n: int, available: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if available is None:
        return torch.ones(n, device=device)
    return available.to(device=device, dtype=torch.float32)


def cosine_distill(student: torch.Tensor, teacher: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``1 − cos`` over available rows; 0 when none is."""
    a = _weights(student.shape[0], available, student.device)
    per_row = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    return (per_row * a).sum() / a.sum().clamp_min(1.0)


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix through one float32 Gram matmul (autocast off).

    Squared distances are clamped at ``1e-12`` before the square root, so the diagonal (and exact
    duplicates) have finite gradients.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        sq = x.pow(2).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(_EPS)
    return d2.sqrt()


class TeacherDistances:
    """Each teacher's pairwise distances over a whole training split, computed once.

    ``block(m, rows)`` is what :func:`pairwise_distances` gives on ``teacher[m][rows]``. Built
    only when the matrices fit ``max_bytes`` (:meth:`build` returns None otherwise, and the loss
    computes each batch's distances itself).
    """

    #: Memory bound of all matrices together (float32 ``n × n`` per teacher).
    MAX_BYTES = 256 * 2**20

    def __init__(self, distances: dict[str, torch.Tensor]):
        self.distances = distances

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: dict[str, torch.Tensor], max_bytes: int | None = None) -> TeacherDistances | None:
        """The cache, or None when there is no teacher or it would exceed ``max_bytes`` (default :attr:`MAX_BYTES`)."""
        n = next((t.shape[0] for t in teacher.values()), 0)
        if not teacher or 4 * n * n * len(teacher) > (cls.MAX_BYTES if max_bytes is None else max_bytes):
            return None
        return cls({m: pairwise_distances(t) for m, t in teacher.items()})

    def block(self, modality: str, rows: torch.Tensor) -> torch.Tensor:
        """``[B, B]`` distances among the training rows ``rows`` (long ``[B]``)."""
        return self.distances[modality].index_select(0, rows).index_select(1, rows)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor | None, available: torch.Tensor | None = None,
                 teacher_distances: torch.Tensor | None = None) -> torch.Tensor:
    """Distance-wise RKD between the available rows of ``student`` and ``teacher`` (widths may differ).

    ``teacher_distances``: the teacher's ``[B, B]`` pairwise distances, if already known (then
    ``teacher`` is not read)."""
    n = student.shape[0]
    a = _weights(n, available, student.device)
    pairs = torch.triu(a[:, None] * a[None, :], diagonal=1)
    n_pairs = pairs.sum()
    ds = pairwise_distances(student)
    ds = ds / ((ds * pairs).sum() / n_pairs.clamp_min(1.0)).clamp_min(_EPS)
    with torch.no_grad():
        dt = pairwise_distances(teacher) if teacher_distances is None else teacher_distances.float()
        dt = dt / ((dt * pairs).sum() / n_pairs.clamp_min(1.0)).clamp_min(_EPS)
    huber = F.smooth_l1_loss(ds, dt, beta=1.0, reduction="none")
    return (huber * pairs).sum() / n_pairs.clamp_min(1.0)


def distill_loss(
    student: dict[str, torch.Tensor],
    teacher_projected: dict[str, torch.Tensor],
    teacher_raw: dict[str, torch.Tensor],
    available: dict[str, torch.Tensor],
    rkd_weight: float,
    teacher_distances: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``Σ_m [L_cos(m) + rkd_weight · L_RKD(m)]`` over modalities with a teacher; rows where
    ``available[m]`` is False are ignored. Returns a float32 scalar (0 when nothing is available).
    ``teacher_distances[m]``: the raw teacher's ``[B, B]`` distances when already known."""
    ref = next(iter(student.values()))
    total = ref.new_zeros((), dtype=torch.float32)
    for m, projected in teacher_projected.items():
        total = total + cosine_distill(student[m], projected, available[m])
        if rkd_weight:
            known = (teacher_distances or {}).get(m)
            total = total + rkd_weight * rkd_distance(student[m], teacher_raw[m], available[m], known)
    return total
