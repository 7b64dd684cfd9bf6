"""Task losses and output activations for every task type."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGMOID_TASKS = ("multilabel", "binary", "multitask")


def task_loss(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Mean BCE over the known (sample, label) pairs (NaN = unknown) for sigmoid tasks; mean
    cross-entropy over the rows with a known class for multiclass; 0 when nothing is known.

    Unknown entries get weight 0 instead of being indexed out: the shapes never depend on the data
    (no host synchronisation; the loss runs under ``vmap`` for a member stack).
    """
    logits = logits.float()
    if task == "multiclass":
        known = ~torch.isnan(y).any(dim=-1)
        per = F.cross_entropy(logits, torch.nan_to_num(y).argmax(dim=-1), reduction="none")
    else:
        known = ~torch.isnan(y)
        per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y), reduction="none")
    return (per * known).sum() / known.sum().clamp_min(1)


def to_probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    return torch.softmax(logits, dim=-1) if task == "multiclass" else torch.sigmoid(logits)


def modality_task_loss(logits: torch.Tensor, y: torch.Tensor, present: torch.Tensor, task: str) -> torch.Tensor:
    """Mean over modalities of each modality's own task loss on the samples where it is present.

    ``logits`` [N, M, C] (every modality head's logits), ``present`` bool [N, M]. For sigmoid
    tasks the BCE is averaged over the (sample, label) pairs with a known label and the modality
    present; for multiclass the cross-entropy over rows with a known class and the modality
    present. A modality with no such pair contributes 0 and is left out of the mean.
    """
    logits = logits.float()
    total, count = logits.sum() * 0.0, logits.new_zeros(())
    for j in range(logits.shape[1]):
        rows = present[:, j].bool()
        if task == "multiclass":
            known = rows & ~torch.isnan(y).any(dim=1)
            per = F.cross_entropy(logits[:, j], torch.nan_to_num(y).argmax(dim=1), reduction="none")
            total = total + (per * known).sum() / known.sum().clamp_min(1)
            count = count + known.any().float()
            continue
        known = (~torch.isnan(y)) & rows[:, None]
        per = F.binary_cross_entropy_with_logits(logits[:, j], torch.nan_to_num(y), reduction="none")
        total = total + (per * known).sum() / known.sum().clamp_min(1)
        count = count + known.any().float()
    return total / count.clamp_min(1.0)
