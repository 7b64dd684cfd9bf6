"""The interface every fusion method (MedMIX, baselines, CP-IMoE) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from medmix.data import TensorData
from medmix.protocols import Protocol


@dataclass
class Prediction:
    """Probabilities for every seed's model: ``prob`` is ``[S, N, C]``.

    ``extras`` holds per-sample interpretability arrays with a leading seed axis, e.g.
    ``router:<modality>`` ``[S, N, K]`` and ``fusion`` ``[S, N, M]``.
    """

    prob: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    extra_columns: dict[str, list[str]] = field(default_factory=dict)


class FusionMethod(ABC):
    """Trains one model per seed on cached embeddings and predicts from them.

    ``params`` are the method's own settings from config (``methods.<name>``) merged over the
    ``training`` section.
    """

    name: ClassVar[str]

    def __init__(self, params: dict[str, Any]):
        self.params = dict(params)

    @abstractmethod
    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        """Train ``len(seeds)`` models; ``protocol`` drives train-time modality dropping."""

    @abstractmethod
    def predict(self, data: TensorData) -> Prediction:
        """Predict with every trained seed's model (inference never uses teachers)."""

    def curves(self) -> pd.DataFrame:
        """Training curves: one row per (seed, epoch)."""
        return pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    def save(self, folder: Path) -> list[Path]:
        """Write deployable checkpoints (safetensors) into ``folder``; returns the files."""
        return []
