"""Training-only teacher–student distillation (MedMIX §3.5).

Per modality ``m`` with a teacher: ``L(m) = L_cos(m) + λ_RKD · L_RKD(m)`` over the samples of the
batch where the modality *and* its teacher embedding are available, and
``L_distill = Σ_m L(m)`` (a modality with no available sample contributes nothing).

- ``L_cos = 1 − cos(z(m), z_T(m))``, averaged over available samples; ``z_T`` is the teacher
  embedding projected to the shared width by a learned linear head.
- ``L_RKD``: distance-wise relational KD (Park et al., CVPR 2019): pairwise Euclidean distances
  among the available samples (pairs ``i < j``), each set divided by its own mean, compared with
  the Huber (smooth-L1, δ = 1) loss. The teacher side uses the frozen *raw* teacher embeddings
  (distance-wise RKD does not need equal widths, and the raw space is the teacher's own
  relational structure); fewer than two available samples give 0.
- The weight ``λ_D(t)`` ramps linearly from 0 at epoch 0 to ``λ_D^max`` at epoch ``T_D``.
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


def cosine_distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 − cos`` over rows; 0 for an empty batch."""
    if student.shape[0] == 0:
        return student.new_zeros((), dtype=torch.float32)
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)).mean()


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distance-wise RKD between the rows of ``student`` and ``teacher`` (widths may differ)."""
    if student.shape[0] < 2:
        return student.new_zeros((), dtype=torch.float32)
    ds = torch.pdist(student.float())
    ds = ds / ds.mean().clamp_min(_EPS)
    with torch.no_grad():
        dt = torch.pdist(teacher.float())
        dt = dt / dt.mean().clamp_min(_EPS)
    return F.smooth_l1_loss(ds, dt, beta=1.0)


def distill_loss(
    student: dict[str, torch.Tensor],
    teacher_projected: dict[str, torch.Tensor],
    teacher_raw: dict[str, torch.Tensor],
    available: dict[str, torch.Tensor],
    rkd_weight: float,
) -> torch.Tensor:
    """``Σ_m [L_cos(m) + rkd_weight · L_RKD(m)]`` over modalities with a teacher; rows where
    ``available[m]`` is False are ignored. Returns a float32 scalar (0 when nothing is available)."""
    total = None
    for m, projected in teacher_projected.items():
        keep = available[m]
        if not bool(keep.any()):
            continue
        z = student[m][keep]
        term = cosine_distill(z, projected[keep])
        if rkd_weight:
            term = term + rkd_weight * rkd_distance(z, teacher_raw[m][keep])
        total = term if total is None else total + term
    if total is None:
        ref = next(iter(student.values()))
        return ref.new_zeros((), dtype=torch.float32)
    return total
