"""CP-IMoE's pre-training stages: each trains one frozen-later part, for every seed.

Stages (``stage_plan``), as in the reference code's three pre-training scripts:

- ``specific_<m>`` per modality ``m``: adapter (the backbone top) + modality-specific expert +
  linear head, task loss on the training samples where ``m`` is present;
- ``redundant``: the ``specific_*`` adapters frozen, an interaction expert + linear head, task
  loss + ``interaction_loss_weight`` × pull-together term, on training samples with at least two
  modalities present (all training samples if there are none);
- ``synergistic``: the same with the push-apart term (hinge at ``push_margin``).

Every stage is trained by the shared :class:`~medmix.training.trainer.EnsembleTrainer` (one
model per seed, best validation loss kept). Deviations from the reference: its loss weight ``w1``
is a learnable parameter initialised at 1 (unbounded below, so it drifts towards rewarding the
opposite of its term); here it is the fixed ``interaction_loss_weight`` (default 1.0). The
reference's Adam + cosine + SWA schedule is replaced by the shared trainer's (``training``
section). A stage's output depends only on :func:`stage_params`, so last-stage settings
(prompts, router) never retrain a stage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmix.data import TensorData
from medmix.models.cpimoe import MISSING_INPUT, InteractionStageNet, SpecificStageNet
from medmix.models.losses import task_loss
from medmix.protocols import Protocol
from medmix.training.trainer import Batch, EnsembleTrainer, Member, TrainConfig, seeded_init

STAGE_FORMAT = "medmix-stage/1"
#: Method params that change a stage's output (plus every TrainConfig key).
STAGE_KEYS = ("hidden_dim", "dropout", "missing_input", "interaction_loss_weight", "push_margin")
DEFAULTS = {"hidden_dim": 256, "dropout": 0.3, "missing_input": "present_set", "interaction_loss_weight": 1.0,
            "push_margin": 2.0}


log = logging.getLogger("medmix.stage")


def stage_plan(modalities: Sequence[str]) -> dict[str, list[str]]:
    """Stage name -> the stages it reads (in the order they must run)."""
    specific = [f"specific_{m}" for m in modalities]
    return {**{s: [] for s in specific}, "redundant": specific, "synergistic": specific}


def stage_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params that change stage outputs, defaults filled in (a stage job's identity)."""
    from dataclasses import fields

    keys = {f.name for f in fields(TrainConfig)} | set(STAGE_KEYS)
    out = {**DEFAULTS, **{k: v for k, v in params.items() if k in keys}}
    if out["missing_input"] not in MISSING_INPUT:
        raise ValueError(f"cpimoe: missing_input must be one of {MISSING_INPUT}, got {out['missing_input']!r}")
    return out


class _Objective:
    def __init__(self, task: str, weight: float = 0.0):
        self.task, self.weight = task, float(weight)

    def _parts(self, model, batch: Batch):
        if isinstance(model, InteractionStageNet):
            logits, aux = model.forward_all(batch.x, batch.mask)
        else:
            logits, aux = model(batch.x, batch.mask), None
        return task_loss(logits, batch.y, self.task), aux

    def loss(self, member: Member, batch: Batch, epoch: int):
        loss, aux = self._parts(member.model, batch)
        if aux is None:
            return loss, {}
        return loss + self.weight * aux, {"interaction_term": aux.detach()}

    def val_loss(self, model, batch: Batch) -> torch.Tensor:
        return self._parts(model, batch)[0]

    def val_logits(self, model, batch: Batch) -> torch.Tensor:
        return model(batch.x, batch.mask)


def _rows(data: TensorData, modalities: Sequence[str], at_least: int) -> np.ndarray:
    present = torch.stack([data.mask[m].any(dim=1) for m in modalities], dim=1).sum(dim=1)
    rows = np.flatnonzero((present >= at_least).numpy())
    return rows


def run_stage(stage: str, train: TensorData, val: TensorData, seeds: Sequence[int], params: dict[str, Any],
              needs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]], pd.DataFrame]:
    """Train ``stage`` for every seed; ``needs`` maps each required stage to its loaded output
    (:func:`load_stage`). Returns (settings, one state per seed, curves)."""
    p = stage_params(params)
    modalities = train.modalities
    plan = stage_plan(modalities)
    if stage not in plan:
        raise KeyError(f"cpimoe: unknown stage {stage!r}; stages for modalities {modalities}: {list(plan)}")
    missing = [s for s in plan[stage] if s not in needs]
    if missing:
        raise ValueError(f"cpimoe stage {stage}: needs the outputs of {missing}")
    dim, n_out, dropout = int(p["hidden_dim"]), len(train.labels), float(p["dropout"])
    dims = train.dims()
    config = TrainConfig.from_params(p)
    if stage.startswith("specific_"):
        modality = stage.removeprefix("specific_")
        tr, va = (d.subset(_rows(d, [modality], 1)) for d in (train, val))

        def build():
            return SpecificStageNet(modality, dims[modality], dim, n_out, dropout)
        weight = 0.0
    else:
        need_two = 2 if len(modalities) > 1 else 1
        tr, va = (d.subset(_rows(d, modalities, need_two)) for d in (train, val))
        if tr.n == 0 or va.n == 0:  # no multimodal samples at all: every sample with any modality
            tr, va = (d.subset(_rows(d, modalities, 1)) for d in (train, val))

        def build():
            return InteractionStageNet(modalities, dims, dim, n_out, dropout, stage, float(p["push_margin"]),
                                       p["missing_input"])
        weight = float(p["interaction_loss_weight"])
    if tr.n > 0 and va.n == 0:
        raise ValueError(f"cpimoe stage {stage}: {tr.n} training but no validation samples with the needed "
                         "modalities (early stopping needs them)")
    members = []
    for seed in seeds:
        net = seeded_init(int(seed), build)
        if isinstance(net, InteractionStageNet):
            for m in modalities:
                state = stage_state(needs[f"specific_{m}"], int(seed))
                net.adapters[m].load_state_dict(_sub(state, "adapter."))
                for q in net.adapters[m].parameters():
                    q.requires_grad_(False)
        trainable = [q for q in net.parameters() if q.requires_grad]
        members.append(Member(int(seed), net, None, [(trainable, 1.0)]))
    settings = {"stage": stage, "modalities": list(modalities), "dims": dims, "n_out": n_out, "params": p,
                "n": {"train": tr.n, "val": va.n}}
    if tr.n == 0:
        # No training row has the stage's modalities (e.g. a train protocol removes one from every row):
        # the stage keeps its seeded initial weights, so nothing is learned from data it may not see.
        log.warning("cpimoe stage %s: no training samples with the needed modalities; the stage stays at its "
                    "seeded initialisation (untrained)", stage)
        curves = pd.DataFrame(columns=["seed", "epoch", "train_loss", "val_loss"])
        settings["untrained"] = True
    else:
        trainer = EnsembleTrainer(config, _Objective(train.task, weight))
        curves = trainer.fit(members, tr, va, Protocol("none"), modalities)
    states = [{k: v.detach().cpu().contiguous() for k, v in m.model.state_dict().items()} for m in members]
    return settings, states, curves


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_stage(folder: str | Path, settings: dict[str, Any], seeds: Sequence[int],
               states: Sequence[dict[str, torch.Tensor]]) -> list[Path]:
    """``stage.json`` + ``seed<k>.safetensors`` written atomically."""
    from safetensors.torch import save_file

    from medmix.store.atomic import atomic_path, write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for seed, state in zip(seeds, states, strict=True):
        path = folder / f"seed{seed}.safetensors"
        with atomic_path(path) as tmp:
            save_file(dict(state), str(tmp), metadata={"format": STAGE_FORMAT, "stage": settings["stage"]})
        files.append(path)
    meta = folder / "stage.json"
    write_text_atomic(meta, json.dumps({"format": STAGE_FORMAT, "seeds": [int(s) for s in seeds], **settings},
                                       indent=2, sort_keys=True, default=str))
    return [meta, *files]


def load_stage(folder: str | Path) -> dict[str, Any]:
    """A stage's settings plus ``states`` (seed -> tensor map)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = folder / "stage.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{folder}: no stage.json (not a CP-IMoE stage output; rerun its stage job)")
    info = json.loads(meta.read_text())
    if info.get("format") != STAGE_FORMAT:
        raise ValueError(f"{meta}: format {info.get('format')!r}, expected {STAGE_FORMAT!r}")
    states = {}
    for seed in info["seeds"]:
        path = folder / f"seed{seed}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint of seed {seed} listed in {meta} is missing")
        states[int(seed)] = load_file(str(path))
    info["states"] = states
    info["folder"] = str(folder)
    return info


def stage_state(stage: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    if seed not in stage["states"]:
        raise KeyError(f"stage {stage['stage']} ({stage.get('folder', 'in memory')}) has no seed {seed}; "
                       f"it was trained for seeds {sorted(stage['states'])}")
    return stage["states"][seed]


def run_all_stages(train: TensorData, val: TensorData, seeds: Sequence[int], params: dict[str, Any]
                   ) -> dict[str, dict[str, Any]]:
    """Every stage in memory (library use and tests; the workflow runs them as separate jobs)."""
    done: dict[str, dict[str, Any]] = {}
    for stage, needs in stage_plan(train.modalities).items():
        settings, states, _ = run_stage(stage, train, val, seeds, params, {s: done[s] for s in needs})
        done[stage] = {**settings, "seeds": list(seeds),
                       "states": dict(zip([int(s) for s in seeds], states, strict=True))}
    return done
