"""The interface every fusion method (MedMIX, baselines, CP-IMoE) implements.

The contract:

- ``fit(train, val, seeds, protocol)`` trains one model per seed (validation only for early
  stopping / model selection; the test split never reaches a method's fit);
- ``predict(data)`` returns every seed's probabilities ``[S, N, C]``;
- ``export()`` / ``restore()`` give the trained state as plain JSON settings plus one tensor map
  per seed; :meth:`FusionMethod.save` writes them as ``method.json`` + ``seed<k>.safetensors``
  and :func:`load_method` rebuilds a predict-only instance, so evaluation runs apart from fit.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from medmix.data import TensorData
from medmix.protocols import Protocol

#: Version of the on-disk method format (``method.json`` + one safetensors file per seed).
METHOD_FORMAT = "medmix-method/1"


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

    ``params`` are the method's own settings from config (``method_params.<name>``) merged over
    the ``training`` section. ``seeds`` lists the trained seeds, in the order of ``predict``'s
    first axis.
    """

    name: ClassVar[str]
    #: Keys of ``method_params.<name>`` this method reads beyond the ``training`` section's (the
    #: config check refuses any other key there).
    extra_params: ClassVar[tuple[str, ...]] = ()
    #: The method's own defaults: they override the ``training`` section and are overridden by
    #: ``method_params.<name>`` and a variant's ``params`` (:func:`medmix.plan.config.training_params`).
    param_defaults: ClassVar[dict[str, Any]] = {}
    #: JSON-schema properties of the method's own settings (keys of ``method_params.<name>`` beyond
    #: the ``training`` section's, checked like that section's and listed in docs/configuration.md);
    #: their defaults belong in ``param_defaults``.
    param_schema: ClassVar[dict[str, dict[str, Any]]] = {}
    #: True for an improvement beyond the paper it extends (e.g. ``medmix_stacked``): the tables
    #: show it as its own row, marked as beyond the paper, never under the paper's name.
    beyond_paper: ClassVar[bool] = False
    #: True where ``predict`` runs in numpy on the CPU (not torch): its cost is measured on the CPU,
    #: its peak memory with ``tracemalloc`` (:mod:`medmix.pipeline.efficiency`).
    numpy_predict: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any]):
        self.params = {**self.param_defaults, **params}
        self.seeds: list[int] = []
        #: Per seed, the hyper-parameters chosen on validation (e.g. the trainer's grid point:
        #: ``{"seed", "lr", "weight_decay", ...}``); saved in ``method.json`` and ``fit.json``, and
        #: their :func:`chosen_values` become ``hp:<key>`` columns of the predictions.
        self.selection: list[dict[str, Any]] = []

    @abstractmethod
    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        """Train ``len(seeds)`` models; ``protocol`` drives train-time modality dropping."""

    @abstractmethod
    def predict(self, data: TensorData) -> Prediction:
        """Predict with every trained seed's model (inference never uses teachers, except the
        ``large_ref_<modality>`` references, which are the teacher alone by definition)."""

    @abstractmethod
    def export(self) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
        """The trained state: JSON-able settings shared by the seeds, one tensor map per seed."""

    @abstractmethod
    def restore(self, settings: dict[str, Any], states: list[dict[str, torch.Tensor]]) -> None:
        """Inverse of :meth:`export` on a fresh instance (``self.seeds`` is already set)."""

    def cost(self, batch: TensorData) -> dict[str, Any] | None:
        """One seed's size and compute on ``batch`` for Table E6 where the method counts them itself:
        ``params``, ``flops_per_sample``, ``flops_kind`` (``flops``, or what is counted instead),
        ``params_note`` and ``flops_note``. None (the default, torch methods): the efficiency job
        counts the exported state's tensor elements and torch's FLOPs around ``predict``."""
        return None

    def curves(self) -> pd.DataFrame:
        """Training curves: one row per (seed, epoch)."""
        return pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``method.json`` and ``seed<k>.safetensors`` (atomically) into ``folder``."""
        from safetensors.torch import save_file

        from medmix.store.atomic import atomic_path, write_text_atomic

        if not self.seeds:
            raise RuntimeError(f"{self.name}: save called before fit")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        settings, states = self.export()
        if len(states) != len(self.seeds):
            raise RuntimeError(f"{self.name}: export gave {len(states)} states for {len(self.seeds)} seeds")
        files = []
        for seed, state in zip(self.seeds, states, strict=True):
            path = folder / f"seed{seed}.safetensors"
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={"format": METHOD_FORMAT, "method": self.name, "seed": str(seed)})
            files.append(path)
        info = {"format": METHOD_FORMAT, "method": self.name, "seeds": self.seeds, "params": self.params,
                "settings": settings,
                "selection": self.selection}
        meta = folder / "method.json"
        write_text_atomic(meta, json.dumps(info, indent=2, sort_keys=True, default=_json_default))
        return [meta, *files]


def chosen_values(selection: list[dict[str, Any]], seed: int) -> dict[str, float]:
    """The scalar choices recorded for ``seed`` (no candidates, criterion values or epochs)."""
    skip = {"seed", "candidates", "criterion", "value", "best_epoch"}
    for entry in selection:
        if int(entry.get("seed", -1)) == int(seed):
            return {k: float(v) for k, v in entry.items() if k not in skip and isinstance(v, (int, float))}
    return {}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable in a method's settings: {type(value).__name__}")
