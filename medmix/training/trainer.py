"""A fast, reproducible trainer for several seeds' models in one process.

Every seed's model is an ordinary, independent ``nn.Module``; the trainer interleaves them step
by step over tensors held in memory (no DataLoader, no per-sample Python) and updates all of them
with **one** fused AdamW call. Each seed owns its random streams (shuffling, train-time protocol
masking, dropout) and its gradient clipping, and no operation mixes two seeds' tensors, so a seed
gives bit-identical results on CPU whether it is trained alone or together with other seeds.

Schedule (MedMIX Appendix C, all from :class:`TrainConfig`): AdamW (decoupled weight decay on
every parameter; a member's parameter group may scale it by its own multiplier, e.g. MedMIX's
``probe_readout`` group), grad-norm clip per seed, base rate ``lr`` (MedMIX's routers: ``router_lr_mult`` ×),
linear warm-up per step over the first ``warmup_epochs`` epochs then constant, early stop after
``patience`` epochs without a better validation criterion, best-validation checkpoint restored
at the end. The criterion (``early_stopping``) is the paper's validation loss (the task loss on
the untouched validation split; distillation is not part of it) by default, or a validation
macro ranking metric (``val_auroc`` / ``val_auprc``, see :data:`EARLY_STOPPING`).

Train-time protocols mask modalities once per epoch on the epoch's shuffled training set with the
seed's generator (the same per-sample drop distribution as masking batch by batch).

**Hyper-parameter grid** (issue 13's fairness rule, for every method trained here): ``lr_grid``
and ``weight_decay_grid`` declare candidate values (empty: the single ``lr`` / ``weight_decay``).
Every point of their product is trained for every seed from that seed's same initial weights,
with the same random streams and the same budget (``max_epochs``, ``patience``,
``early_stopping``); per seed, the point with the best validation criterion (ties: the first in
grid order) is kept. The choice is in :attr:`EnsembleTrainer.selection` and in the curves
(``grid_lr``, ``grid_weight_decay``, ``selected``). Only the training and validation splits are
ever read. A grid point whose validation loss turns non-finite is dropped (it cannot be chosen);
without a grid that is an error, as before.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from typing import Protocol as TypingProtocol

import pandas as pd
import torch
from torch import nn

from medmix.data import TensorData
from medmix.protocols import Protocol
from medmix.training.optim import FusedAdamW, clip_grad_norm
from medmix.training.stacked import MemberStack, NotStackable

log = logging.getLogger(__name__)

#: Early-stopping / checkpoint criteria: the validation task loss (the paper's), or the
#: validation macro AUROC / AUPRC over labels with both classes present (higher is better; ties
#: keep the earlier epoch). The metrics need the objective's ``val_logits``.
EARLY_STOPPING = ("val_loss", "val_auroc", "val_auprc")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings every neural method reads; defaults are the paper's (Appendix C). A
    method's own settings (e.g. MedMIX's distillation) are its own (``FusionMethod.param_schema``)."""

    lr: float = 1e-5
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_epochs: int = 50
    max_epochs: int = 200
    batch_size: int = 256
    patience: int = 20
    #: Early-stopping and checkpoint criterion, one of :data:`EARLY_STOPPING` (paper: val_loss).
    early_stopping: str = "val_loss"
    #: Candidate learning rates / weight decays chosen per seed on validation (empty: ``lr`` /
    #: ``weight_decay`` alone); every point of their product gets the same budget. Not in the paper.
    lr_grid: tuple[float, ...] = ()
    weight_decay_grid: tuple[float, ...] = ()
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0
    eval_batch_size: int = 8192
    #: Train the members (seeds, grid points) of one architecture as one stacked computation
    #: (:mod:`medmix.training.stacked`): True, False (one after another), or ``auto``: stacked on CUDA
    #: only. On CPU it measured slower (tests/benchmarks/results/stacked_trainer.md): member by member
    #: the matmuls already run near torch.mm's speed, and the batched matmuls ``vmap`` issues do not.
    stack_members: bool | str = "auto"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainConfig:
        """Pick this class's keys from a method's params (other keys are ignored)."""
        known = {f.name: f.type for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known}
        if "betas" in values:
            values["betas"] = tuple(float(b) for b in values["betas"])
        for key in ("lr_grid", "weight_decay_grid"):
            if key in values:
                if not isinstance(values[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list of numbers, got {values[key]!r}")
                values[key] = tuple(float(v) for v in values[key])
        for key in ("lr", "weight_decay", "grad_clip"):
            if key in values:
                values[key] = float(values[key])
        for key in ("warmup_epochs", "max_epochs", "batch_size", "patience", "eval_batch_size", "threads"):
            if key in values:
                values[key] = int(values[key])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}")
        for name, grid, low in (("lr_grid", self.lr_grid, 0.0), ("weight_decay_grid", self.weight_decay_grid, None)):
            if len(set(grid)) != len(grid):
                raise ValueError(f"{name} has repeated values: {list(grid)}")
            if any(v != v or (v <= low if low is not None else v < 0) for v in grid):
                raise ValueError(f"{name} values must be {'> 0' if low is not None else '>= 0'}, got {list(grid)}")
        if self.stack_members not in (True, False, "auto"):
            raise ValueError(f"stack_members must be true, false or auto, got {self.stack_members!r}")
        if len(self.betas) != 2 or self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"invalid training settings: {self}")

    def grid(self) -> list[tuple[float, float]]:
        """The ``(lr, weight_decay)`` points, in grid order (one point without a grid)."""
        return list(itertools.product(self.lr_grid or (self.lr,), self.weight_decay_grid or (self.weight_decay,)))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def cpu_supports_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 / AMX) through oneDNN."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain float32.

    ``auto`` is bf16 on CUDA devices that support it and float32 on CPUs. bf16 on this CPU
    (AVX512-BF16) was measured in ``benchmarks/bench_trainer.py``: same validation loss and AUROC,
    but only ~1.15x faster with one thread and no faster with two (the non-matmul work and the
    weight casts eat the matmul gain), so it is opt-in there (``precision: bf16``).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            raise RuntimeError("precision 'bf16' requested but this CPU has no native bf16 matmuls; use 'fp32'")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return None


def resolve_runtime(config: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None) for ``config``."""
    device = resolve_device(config.device)
    return device, resolve_precision(config.precision, device)


@contextlib.contextmanager
def cpu_threads(threads: int):
    """Run the block with ``threads`` intra-op CPU threads (0: leave torch's setting)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads > 0:
            torch.set_num_threads(before)


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


class RowsOnDemand(Mapping[str, torch.Tensor]):
    """Rows ``idx`` of each tensor of ``source``, gathered the first time its key is read (a batch's
    teacher embeddings: a step that does not read them, e.g. before distillation starts, never
    copies them)."""

    def __init__(self, source: Mapping[str, torch.Tensor], idx: torch.Tensor):
        self._source, self._idx = source, idx
        self._rows: dict[str, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        rows = self._rows.get(key)
        if rows is None:
            rows = self._rows[key] = self._source[key].index_select(0, self._idx)
        return rows

    def __contains__(self, key: object) -> bool:  # without gathering (Mapping's default reads the key)
        return key in self._source

    def __iter__(self) -> Iterator[str]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)


@dataclass
class Batch:
    """One batch on the training device (per-seed masks already applied)."""

    x: dict[str, list[torch.Tensor]]
    mask: dict[str, torch.Tensor]
    y: torch.Tensor
    #: Read-only (a training batch gathers a teacher's rows when its objective first reads them).
    teacher: Mapping[str, torch.Tensor] = field(default_factory=dict)
    teacher_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    #: The batch's row indices in its dataset (long, on the device): a method indexes its own
    #: per-row data with them (e.g. MedMIX's cross-fitting folds).
    rows: torch.Tensor | None = None


@dataclass
class Member:
    """One seed's model, its training-only modules and its parameter groups.

    ``param_groups`` is a list of ``(parameters, lr multiplier)`` or ``(parameters, lr multiplier,
    weight-decay multiplier)`` (default 1: the run's weight decay); ``model`` is what gets deployed,
    ``aux`` (e.g. teacher heads) is trained alongside and then dropped.
    """

    seed: int
    model: nn.Module
    aux: nn.Module | None = None
    param_groups: list[tuple] = field(default_factory=list)

    def parameters(self) -> list[nn.Parameter]:
        return [p for group in self.param_groups for p in group[0]]

    def groups(self) -> list[tuple[list[nn.Parameter], float, float]]:
        """``param_groups`` as ``(parameters, lr multiplier, weight-decay multiplier)``."""
        out = []
        for group in self.param_groups:
            if len(group) not in (2, 3):
                raise ValueError(f"seed {self.seed}: a parameter group is (params, lr_mult[, wd_mult]), "
                                 f"got {len(group)} items")
            params, lr_mult, wd_mult = (*group, 1.0) if len(group) == 2 else group
            if lr_mult <= 0 or wd_mult < 0:
                raise ValueError(f"seed {self.seed}: lr multiplier must be > 0 and weight-decay multiplier >= 0, "
                                 f"got {lr_mult} / {wd_mult}")
            out.append((list(params), float(lr_mult), float(wd_mult)))
        return out


class Objective(TypingProtocol):
    """What a method trains: a loss per member and batch, and logits for the validation loss."""

    def loss(self, member: Member, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def val_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    # Optional: ``val_logits(model, batch) -> logits [N, C]`` (needed by the metric early-stopping
    # criteria ``val_auroc`` / ``val_auprc``).
    # Optional: ``diagnostics(model, batch) -> dict[str, float]`` on the whole validation split in
    # eval mode, once per epoch; the values become columns of the curves (e.g. router entropy).
    # Optional: ``validate(model, batch) -> (val loss, diagnostics)``, both from one forward (used
    # when the validation split is one evaluation chunk).
    # Optional: ``training_split(batch | None)``: the whole training split (a :class:`Batch` of
    # views) before the first step, None after the last (e.g. to precompute per-row constants
    # that batches then read at their ``rows``).


def seeded_init(seed: int, build: Callable[[], Any]) -> Any:
    """Run ``build`` (module construction) with the global RNG seeded by ``seed``, then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class _DeviceData:
    """A dataset's tensors on the training device (masks stay on CPU for the protocols).

    Absent rows are zeroed. Embeddings are stored in the autocast dtype: the matmuls would round
    them to it anyway, and half-width rows halve the per-batch gather traffic.
    """

    def __init__(
        self, data: TensorData, device: torch.device, modalities: Sequence[str], dtype: torch.dtype | None,
        teachers: bool = True,
    ):
        dtype = dtype or torch.float32
        self.n = data.n
        self.modalities = list(modalities)
        self.mask_cpu = {m: data.mask[m].bool() for m in self.modalities}
        self.x = {
            m: [torch.where(self.mask_cpu[m][:, k : k + 1], t, 0.0).to(device, dtype) for k, t in enumerate(data.x[m])]
            for m in self.modalities
        }
        self.y = data.y.to(device, torch.float32)
        self.teacher = {
            m: torch.where(data.teacher_mask[m][:, None].bool(), t, 0.0).to(device, dtype)
            for m, t in data.teacher.items()
            if teachers and m in self.modalities
        }
        self.teacher_mask = {m: data.teacher_mask[m].bool().to(device) for m in self.teacher}
        self.device = device

    def batch(self, idx: torch.Tensor, mask: dict[str, torch.Tensor]) -> Batch:
        return Batch(
            {m: [t.index_select(0, idx) for t in xs] for m, xs in self.x.items()},
            mask,
            self.y.index_select(0, idx),
            RowsOnDemand(self.teacher, idx),
            {m: t.index_select(0, idx) for m, t in self.teacher_mask.items()},
            idx,
        )

    def stacked_batch(self, plans: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]], lo: int, hi: int
                      ) -> dict[str, Any]:
        """Rows ``lo:hi`` of every member's plan (its permutation and masks), as :class:`Batch` fields
        with a leading member dimension: ``[E, hi - lo, ...]``."""
        e, rows = len(plans), hi - lo
        idx = torch.cat([perm[lo:hi] for perm, _ in plans])

        def gather(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, idx).view(e, rows, *t.shape[1:])

        return {
            "x": {m: [gather(t) for t in xs] for m, xs in self.x.items()},
            "mask": {m: torch.stack([masks[m][lo:hi] for _, masks in plans]) for m in self.modalities},
            "y": gather(self.y),
            "teacher": {m: gather(t) for m, t in self.teacher.items()},
            "teacher_mask": {m: gather(t) for m, t in self.teacher_mask.items()},
            "rows": idx.view(e, rows),
        }

    def full_masked(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as views (no copy) with their own masks."""
        return Batch(
            {m: [t[start:stop] for t in xs] for m, xs in self.x.items()},
            {m: t[start:stop].to(self.device) for m, t in self.mask_cpu.items()},
            self.y[start:stop],
            {m: t[start:stop] for m, t in self.teacher.items()},
            {m: t[start:stop] for m, t in self.teacher_mask.items()},
            torch.arange(start, stop, device=self.device),
        )


@dataclass
class _State:
    member: Member
    data_gen: torch.Generator
    noise_gen: torch.Generator
    best_val: float = float("inf")  # best criterion value (lower is better)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    active: bool = True
    lr: float = 0.0
    weight_decay: float = 0.0
    diverged: bool = False


class EnsembleTrainer:
    """Trains a list of :class:`Member` (one per seed) with a shared schedule."""

    def __init__(self, config: TrainConfig, objective: Objective):
        self.config = config
        self.objective = objective
        self.device, self.dtype = resolve_runtime(config)
        #: Per seed (in member order) after :meth:`fit`: the chosen grid point and every candidate's
        #: best validation criterion (``{"seed", "lr", "weight_decay", "criterion", "value",
        #: "best_epoch", "candidates": [...]}``; ``value`` is the loss, or the metric for metric criteria).
        self.selection: list[dict[str, Any]] = []

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        warm = self.config.warmup_epochs * steps_per_epoch
        return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)

    def _optimizer(
        self, members: Sequence[Member], points: Sequence[tuple[float, float]] | None = None
    ) -> FusedAdamW:
        """One fused AdamW (:class:`~medmix.training.optim.FusedAdamW`) over every member; a parameter
        group per (lr, weight decay, lr multiplier, weight-decay multiplier), with ``points[i]`` the
        (lr, weight decay) of ``members[i]`` (default: the config's); a group's rate is ``lr × lr_mult``,
        its decay ``wd × wd_mult``."""
        points = points or [(self.config.lr, self.config.weight_decay)] * len(members)
        by_key: dict[tuple[float, float, float, float], list[nn.Parameter]] = {}
        for member, (lr, wd) in zip(members, points, strict=True):
            for params, mult, wd_mult in member.groups():
                by_key.setdefault((lr, wd, mult, wd_mult), []).extend(params)
        groups = [{"params": ps, "lr": lr * mult, "base_lr": lr * mult, "lr_mult": mult,
                   "weight_decay": wd * wd_mult}
                  for (lr, wd, mult, wd_mult), ps in by_key.items() if ps]
        c = self.config
        return FusedAdamW(groups, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)

    def fit(
        self, members: Sequence[Member], train: TensorData, val: TensorData, protocol: Protocol,
        modalities: Sequence[str],
    ) -> pd.DataFrame:
        """Train every member in place (best-validation weights restored); returns the curves."""
        if train.n == 0 or val.n == 0:
            raise ValueError(f"training needs non-empty train and val splits (got {train.n} / {val.n} samples)")
        grid = self.config.grid()
        # One copy of every member per grid point after the first: the same initial weights.
        runs = [(point, member if g == 0 else copy.deepcopy(member))
                for g, point in enumerate(grid) for member in members]
        with cpu_threads(self.config.threads):
            states, curves = self._fit(runs, train, val, protocol, modalities, tolerate_divergence=len(grid) > 1)
        self.selection = []
        chosen_rows = pd.Series(False, index=curves.index)
        for i, member in enumerate(members):
            candidates = [states[g * len(members) + i] for g in range(len(grid))]
            usable = [s for s in candidates if not s.diverged and s.best_state is not None]
            if not usable:
                raise FloatingPointError(
                    f"seed {member.seed}: every grid point diverged (lr_grid={[p[0] for p in grid]}, "
                    f"weight_decay_grid={[p[1] for p in grid]}); lower the learning rates or use precision='fp32'")
            best = min(usable, key=lambda s: s.best_val)  # min keeps the first of equal values (grid order)
            if best.member is not member:
                member.model.load_state_dict(best.member.model.state_dict())
                if member.aux is not None and best.member.aux is not None:
                    member.aux.load_state_dict(best.member.aux.state_dict())
                member.model.eval()
            sign = 1.0 if self.config.early_stopping == "val_loss" else -1.0
            self.selection.append({
                "seed": member.seed, "lr": best.lr, "weight_decay": best.weight_decay,
                "criterion": self.config.early_stopping, "value": sign * best.best_val, "best_epoch": best.best_epoch,
                "candidates": [{"lr": s.lr, "weight_decay": s.weight_decay, "best_epoch": s.best_epoch,
                                "value": None if s.diverged else sign * s.best_val} for s in candidates],
            })
            chosen_rows |= ((curves["seed"] == member.seed) & (curves["grid_lr"] == best.lr)
                            & (curves["grid_weight_decay"] == best.weight_decay))
        curves["selected"] = chosen_rows
        return curves

    def _fit(
        self, runs: Sequence[tuple[tuple[float, float], Member]], train: TensorData, val: TensorData,
        protocol: Protocol, modalities: Sequence[str], tolerate_divergence: bool = False,
    ) -> tuple[list[_State], pd.DataFrame]:
        t0 = time.perf_counter()
        teachers = any(member.aux is not None for _, member in runs)
        tr = _DeviceData(train, self.device, modalities, self.dtype, teachers)
        va = _DeviceData(val, self.device, modalities, self.dtype, teachers=False)
        states = []
        for (lr, weight_decay), member in runs:
            member.model.to(self.device)
            if member.aux is not None:
                member.aux.to(self.device)
            data_gen = torch.Generator().manual_seed(member.seed)
            noise_gen = data_gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(member.seed)
            if hasattr(member.model, "set_dropout_generator"):
                member.model.set_dropout_generator(noise_gen)
            states.append(_State(member, data_gen, noise_gen, lr=lr, weight_decay=weight_decay))
        prepare = getattr(self.objective, "training_split", None)
        if prepare is not None:
            prepare(tr.full_masked(0, tr.n))
        try:
            return self._train(states, tr, va, val, protocol, tolerate_divergence, t0)
        finally:
            if prepare is not None:
                prepare(None)

    def _train(self, states: list[_State], tr: _DeviceData, va: _DeviceData, val: TensorData, protocol: Protocol,
               tolerate_divergence: bool, t0: float) -> tuple[list[_State], pd.DataFrame]:
        c = self.config
        stack = c.stack_members is True or (c.stack_members == "auto" and self.device.type == "cuda")
        stacks = self._stacks(states, tr, protocol) if stack else None
        if stacks is None:
            optimizer = self._optimizer([s.member for s in states], [(s.lr, s.weight_decay) for s in states])
        else:
            optimizer = self._stacked_optimizer(stacks)
        steps = -(-tr.n // c.batch_size)
        rows: list[dict[str, Any]] = []
        step = 0
        log_every = max(1, c.max_epochs // 20)
        for epoch in range(c.max_epochs):
            active = [s for s in states if s.active]
            if not active:
                break
            plans = {}
            for s in active:
                perm = torch.randperm(tr.n, generator=s.data_gen)
                masks = protocol.apply({m: t[perm] for m, t in tr.mask_cpu.items()}, s.data_gen)
                plans[id(s)] = (perm.to(self.device), {m: t.to(self.device) for m, t in masks.items()})
                s.member.model.train()
                if s.member.aux is not None:
                    s.member.aux.train()
            for stack, _ in stacks or []:
                stack.shell.train()  # its modules are a member's, which may have stopped (and been left in eval)
            sums: dict[int, dict[str, torch.Tensor]] = {id(s): {} for s in active}
            factor = 1.0
            for b in range(steps):
                lo, hi = b * c.batch_size, min(tr.n, (b + 1) * c.batch_size)
                factor = self.lr_factor(step, steps)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                weight = (hi - lo) / tr.n
                if stacks is None:
                    self._step_each(active, plans, sums, tr, lo, hi, epoch, weight)
                else:
                    self._step_stacked(stacks, plans, sums, tr, lo, hi, epoch, weight)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            for stack, _ in stacks or []:
                stack.write_back()
            for s in active:
                acc = sums[id(s)]
                val_loss, diagnostics = self.validation(s.member.model, va)
                if val_loss != val_loss or val_loss in (float("inf"), float("-inf")):
                    if tolerate_divergence:  # a grid point that diverged is dropped, never chosen
                        s.diverged, s.active = True, False  # inactive: no more gradients, so no more updates
                        continue
                    raise FloatingPointError(
                        f"seed {s.member.seed}: validation loss is {val_loss} at epoch {epoch}; "
                        f"training diverged (lower lr={s.lr} or use precision='fp32')"
                    )
                metric = self.validation_metric(s.member.model, va, val) if c.early_stopping != "val_loss" else None
                criterion = val_loss if metric is None else -metric
                improved = criterion < s.best_val
                if improved:
                    s.best_val, s.best_epoch, s.bad_epochs = criterion, epoch, 0
                    s.best_state = {k: v.detach().clone() for k, v in s.member.model.state_dict().items()}
                else:
                    s.bad_epochs += 1
                    if s.bad_epochs >= c.patience:
                        s.active = False
                rows.append({
                    "seed": s.member.seed, "epoch": epoch, **{k: float(v) for k, v in acc.items()},
                    "val_loss": val_loss, **({c.early_stopping: metric} if metric is not None else {}),
                    "lr": s.lr * factor, "improved": improved, "grid_lr": s.lr, "grid_weight_decay": s.weight_decay,
                    **diagnostics,
                    "seconds": round(time.perf_counter() - t0, 3),
                })
                if epoch % log_every == 0 or not s.active or epoch == c.max_epochs - 1:
                    point = f" (lr {s.lr:g}, wd {s.weight_decay:g})" if tolerate_divergence else ""  # a grid run
                    log.info("seed %d%s epoch %d/%d: train loss %.4f, val loss %.4f%s; best %s %.4f at epoch %d%s",
                             s.member.seed, point, epoch + 1, c.max_epochs, float(acc.get("train_loss", 0.0)),
                             val_loss, "" if metric is None else f", {c.early_stopping} {metric:.4f}",
                             c.early_stopping, abs(s.best_val), s.best_epoch + 1,
                             "" if s.active else f"; stopped ({c.patience} epochs without improvement)")
            if stacks is not None:
                stacks = self._shrink(stacks, optimizer)
        for s in states:
            if s.best_state is not None:
                s.member.model.load_state_dict(s.best_state)
            s.member.model.eval()
            if hasattr(s.member.model, "set_dropout_generator"):
                s.member.model.set_dropout_generator(None)
        return states, pd.DataFrame(rows)

    def _step_each(self, active: list[_State], plans, sums, tr: _DeviceData, lo: int, hi: int, epoch: int,
                   weight: float) -> None:
        """One batch, member after member (the fallback when members cannot be stacked)."""
        for s in active:
            perm, masks = plans[id(s)]
            batch = tr.batch(perm[lo:hi], {m: t[lo:hi] for m, t in masks.items()})
            with autocast(self.device, self.dtype):
                loss, parts = self.objective.loss(s.member, batch, epoch)
            loss.backward()
            clip_grad_norm(list(s.member.parameters()), self.config.grad_clip)
            acc = sums[id(s)]
            for key, value in {"train_loss": loss.detach(), **parts}.items():
                acc[key] = acc.get(key, 0.0) + value.detach().float() * weight

    def _step_stacked(self, stacks, plans, sums, tr: _DeviceData, lo: int, hi: int, epoch: int, weight: float) -> None:
        """One batch, every stack's members as one computation each."""
        for stack, members in stacks:
            batch = tr.stacked_batch([plans[id(s)] for s in members], lo, hi)
            with autocast(self.device, self.dtype):
                loss, parts = stack.loss(self.objective, Member, Batch, batch, epoch, hi - lo, self.device)
            loss.sum().backward()
            stack.clip_grad_norms(self.config.grad_clip)
            for i, s in enumerate(members):
                acc = sums[id(s)]
                for key, value in {"train_loss": loss.detach(), **parts}.items():
                    value = value.detach().float()
                    acc[key] = acc.get(key, 0.0) + (value[i] if value.dim() else value) * weight

    def _stacks(self, states: list[_State], tr: _DeviceData, protocol: Protocol):
        """``[(MemberStack, its states)]``, one stack per grid point, or None (train member by member).

        Members are stacked when they have one architecture and the objective's loss runs under
        ``vmap`` (tried once on a first batch, without touching any state or random stream)."""
        by_point: dict[tuple[float, float], list[_State]] = {}
        for s in states:
            by_point.setdefault((s.lr, s.weight_decay), []).append(s)
        stacks = []
        try:
            for group in by_point.values():
                stack = MemberStack([s.member for s in group], [s.noise_gen for s in group])
                stacks.append((stack, group))
            stacks[0][0].try_loss(self.objective, Member, Batch, tr, protocol, self.config.batch_size, self.device,
                                  lambda: autocast(self.device, self.dtype))
        except NotStackable as exc:
            log.info("training %d members one after another: %s", len(states), exc)
            return None
        log.info("training %d members as %d stacked computation(s) of %s", len(states), len(stacks),
                 "/".join(str(len(g)) for _, g in stacks))
        return stacks

    def _stacked_optimizer(self, stacks) -> FusedAdamW:
        by_key: dict[tuple[float, float, float], list[torch.Tensor]] = {}
        for stack, group in stacks:
            lr, wd = group[0].lr, group[0].weight_decay
            for name, tensor in stack.trained().items():
                mult, wd_mult = stack.group_of[name]
                by_key.setdefault((lr * mult, wd * wd_mult, mult), []).append(tensor)
        groups = [{"params": ps, "lr": lr, "base_lr": lr, "lr_mult": mult, "weight_decay": wd}
                  for (lr, wd, mult), ps in by_key.items()]
        c = self.config
        return FusedAdamW(groups, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)

    @staticmethod
    def _shrink(stacks, optimizer: FusedAdamW):
        """Stacks without their stopped members (their weights written back first)."""
        kept = []
        for stack, group in stacks:
            keep = [i for i, s in enumerate(group) if s.active]
            if len(keep) == len(group):
                kept.append((stack, group))
                continue
            smaller = stack.keep(keep, optimizer)
            if smaller is not None:
                kept.append((smaller, [group[i] for i in keep]))
        return kept

    @torch.no_grad()
    def validation(self, model: nn.Module, data: _DeviceData) -> tuple[float, dict[str, float]]:
        """The validation loss and the objective's diagnostics: one forward where the objective's
        ``validate`` gives both and the split is one evaluation chunk, else one pass each."""
        fn = getattr(self.objective, "validate", None)
        if fn is None or data.n > self.config.eval_batch_size:
            return self.validation_loss(model, data), self.diagnostics(model, data)
        model.eval()
        with autocast(self.device, self.dtype):
            loss, stats = fn(model, data.full_masked(0, data.n))
        return float(loss), {k: float(v) for k, v in stats.items()}

    @torch.no_grad()
    def diagnostics(self, model: nn.Module, data: _DeviceData) -> dict[str, float]:
        """The objective's per-epoch diagnostics on the validation split (empty if it has none)."""
        fn = getattr(self.objective, "diagnostics", None)
        if fn is None:
            return {}
        model.eval()
        with autocast(self.device, self.dtype):
            return {k: float(v) for k, v in fn(model, data.full_masked(0, data.n)).items()}

    @torch.no_grad()
    def validation_metric(self, model: nn.Module, data: _DeviceData, val: TensorData) -> float:
        """Validation macro AUROC or AUPRC (``early_stopping``) of ``model``'s probabilities."""
        from medmix.metrics.ranking import macro_ranking
        from medmix.models.losses import to_probabilities

        fn = getattr(self.objective, "val_logits", None)
        if fn is None:
            raise TypeError(f"early_stopping={self.config.early_stopping!r} needs an objective with val_logits")
        model.eval()
        chunk = self.config.eval_batch_size
        probs = []
        for lo in range(0, data.n, chunk):
            hi = min(data.n, lo + chunk)
            with autocast(self.device, self.dtype):
                probs.append(to_probabilities(fn(model, data.full_masked(lo, hi)).float(), val.task).cpu())
        prob = torch.cat(probs).numpy()
        value = macro_ranking(prob, val.y.numpy(), val.task)[self.config.early_stopping.removeprefix("val_")]
        return float(value) if value == value else 0.0

    @torch.no_grad()
    def validation_loss(self, model: nn.Module, data: _DeviceData) -> float:
        model.eval()
        chunk = self.config.eval_batch_size
        total = 0.0
        for lo in range(0, data.n, chunk):
            hi = min(data.n, lo + chunk)
            with autocast(self.device, self.dtype):
                total += float(self.objective.val_loss(model, data.full_masked(lo, hi))) * (hi - lo)
        return total / data.n
