"""Deployable MedMIX checkpoints as safetensors (weights + config in the file's metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from medmix.atomic import atomic_path
from medmix.models.medmix import MedMIXConfig, MedMIXNet

FORMAT = "medmix-net/1"


def save_model(model: MedMIXNet, path: str | Path, info: dict | None = None) -> Path:
    """Write ``model``'s weights (no teacher heads: they are not part of :class:`MedMIXNet`)."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.config.to_json(), "info": json.dumps(info or {}, sort_keys=True)}
    path = Path(path)
    with atomic_path(path, verify=lambda p: _check_keys(p, state.keys())) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _check_keys(path: Path, expected) -> None:
    with safe_open(str(path), framework="pt") as fh:
        if set(fh.keys()) != set(expected):
            raise OSError(f"{path}: written checkpoint does not hold the expected tensors")


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> MedMIXNet:
    """Rebuild a :class:`MedMIXNet` from a checkpoint written by :func:`save_model` (eval mode)."""
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a MedMIX checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    model = MedMIXNet(MedMIXConfig.from_json(meta["config"]))
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval()
