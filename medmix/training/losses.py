"""Task losses and output activations for every task type."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGMOID_TASKS = ("multilabel", "binary", "multitask")


def task_loss(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """BCE over known labels (NaN = unknown) for sigmoid tasks; cross-entropy for multiclass."""
    logits = logits.float()
    if task == "multiclass":
        known = ~torch.isnan(y).any(dim=1)
        if not known.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[known], y[known].argmax(dim=1))
    known = ~torch.isnan(y)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], y[known])


def to_probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    return torch.softmax(logits, dim=-1) if task == "multiclass" else torch.sigmoid(logits)
