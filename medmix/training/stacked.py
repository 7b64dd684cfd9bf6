"""Members of one architecture trained as one computation: their parameters stacked, one ``vmap``.

:class:`MemberStack` holds the members that share an architecture and a grid point. Every
parameter and buffer becomes one tensor with a leading member dimension; ``torch.func.vmap`` over
``functional_call`` runs the objective's loss for all members at once, so each linear layer is one
batched matmul instead of one small matmul per member, and the backward is one autograd graph.

What stays per member, exactly as in the one-member-at-a-time loop:

- its data order and train-time protocol masks (the trainer gathers each member's rows);
- its dropout stream: :class:`~medmix.models.medmix.SeededDropout` normally draws from the
  member's generator inside the forward; here the stack draws the same bits from the same
  generator *before* the forward, in the order the forward consumes them (recorded once per batch
  size by a dry run), and feeds them to the dropout layers;
- its gradient-norm clipping (each member's norm over its own gradients) and its AdamW state
  (Adam is element-wise, so the stacked update of a member's slice is that member's update).

No operation mixes two members' values. Members leave the stack when they stop (early stopping,
divergence); the stack is then rebuilt from the remaining ones, optimizer state included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from medmix.models.medmix import SeededDropout


class NotStackable(Exception):
    """The members cannot be trained as one computation (different architectures or parameter groups)."""


class _Shell(nn.Module):
    """One member's model and training-only modules as one module (the functional-call target)."""

    def __init__(self, model: nn.Module, aux: nn.Module | None):
        super().__init__()
        self.model = model
        self.aux = aux

    def forward(self, objective, member_cls, seed: int, batch, epoch: int):
        return objective.loss(member_cls(seed, self.model, self.aux), batch, epoch)


def _named_tensors(shell: _Shell) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return dict(shell.named_parameters()), dict(shell.named_buffers())


class MemberStack:
    """The trainable state of several members as stacked tensors (see the module docstring).

    ``members`` are :class:`~medmix.training.trainer.Member` objects with the same parameter
    names, shapes and group multipliers; ``noise_generators[i]`` is member ``i``'s dropout stream.
    """

    def __init__(self, members: Sequence[Any], noise_generators: Sequence[torch.Generator]):
        if not members:
            raise ValueError("a member stack needs at least one member")
        self.members = list(members)
        self.noise_generators = list(noise_generators)
        shells = [_Shell(m.model, m.aux) for m in self.members]
        named = [_named_tensors(s) for s in shells]
        params0, buffers0 = named[0]
        for member, (params, buffers) in zip(self.members[1:], named[1:], strict=True):
            for kind, got, want in (("parameters", params, params0), ("buffers", buffers, buffers0)):
                if list(got) != list(want) or any(got[k].shape != want[k].shape for k in want):
                    raise NotStackable(f"seed {member.seed}: its {kind} differ from seed {self.members[0].seed}'s")
        # Parameter -> (lr multiplier, weight-decay multiplier); the same for every member.
        self.group_of: dict[str, tuple[float, float]] = {}
        for i, (member, (params, _)) in enumerate(zip(self.members, named, strict=True)):
            by_id = {id(p): name for name, p in params.items()}
            groups = {}
            for ps, lr_mult, wd_mult in member.groups():
                for p in ps:
                    if id(p) not in by_id:
                        raise NotStackable(f"seed {member.seed}: a trained parameter is not part of its modules")
                    groups[by_id[id(p)]] = (lr_mult, wd_mult)
            if i == 0:
                self.group_of = groups
            elif groups != self.group_of:
                raise NotStackable(f"seed {member.seed}: its parameter groups differ from seed "
                                   f"{self.members[0].seed}'s")
        self.shell = shells[0]
        self.dropouts = [m for m in self.shell.modules() if isinstance(m, SeededDropout)]
        with torch.no_grad():
            self.params = {name: torch.stack([p[name].detach() for p, _ in named]).requires_grad_(name in self.group_of)
                           for name in params0}
            self.buffers = {name: torch.stack([b[name].detach() for _, b in named]) for name in buffers0}
        self._named = named
        self._noise_shapes: dict[int, list[tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return len(self.members)

    def trained(self) -> dict[str, torch.Tensor]:
        """The stacked tensors the optimizer updates, by parameter name."""
        return {name: self.params[name] for name in self.group_of}

    # -- the batched loss ----------------------------------------------------------------------------
    def _call(self, objective, member_cls, batch_cls, epoch: int, feed):
        seed = self.members[0].seed

        def one(params, buffers, batch, noise):
            queue = list(noise)
            for module in self.dropouts:
                module.source = lambda shape, _q=queue: _take(_q, shape)
            try:
                loss, parts = functional_call(self.shell, (params, buffers), (objective, member_cls, seed,
                                                                              batch_cls(**batch), epoch))
            finally:
                for module in self.dropouts:
                    module.source = None
            if queue:
                raise RuntimeError(f"{len(queue)} recorded dropout draws were not used: the forward's dropout calls "
                                   "depend on the data, which a member stack cannot reproduce")
            return loss, parts

        return vmap(one, randomness="error")(self.params, self.buffers, feed[0], feed[1])

    def _record_noise_shapes(self, objective, member_cls, batch_cls, batch: dict[str, Any], epoch: int, rows: int):
        """The shapes of the forward's dropout draws for a batch of ``rows`` rows (one dry run)."""
        shapes: list[tuple[int, ...]] = []

        def record(shape):
            shapes.append(tuple(shape))
            return torch.full(shape, 2**31 - 1, dtype=torch.int32)  # keep everything; the values are unused

        buffers = self.buffers
        self.buffers = {k: v.clone() for k, v in buffers.items()}  # the dry run must not change any state
        try:
            for module in self.dropouts:
                module.source = record
            with torch.no_grad():
                vmap(lambda p, b, x: functional_call(self.shell, (p, b), (objective, member_cls, self.members[0].seed,
                                                                          batch_cls(**x), epoch)),
                     randomness="error")(self.params, self.buffers, batch)
        finally:
            for module in self.dropouts:
                module.source = None
            self.buffers = buffers
        self._noise_shapes[rows] = shapes
        return shapes

    def loss(self, objective, member_cls, batch_cls, batch: dict[str, Any], epoch: int, rows: int, device):
        """Every member's ``(loss [E], parts {name: [E]})`` on its own rows of ``batch`` (tensors
        ``[E, rows, ...]``)."""
        noise = []
        if self.dropouts and any(m.training and m.p > 0 for m in self.dropouts):
            shapes = self._noise_shapes.get(rows)
            if shapes is None:
                shapes = self._record_noise_shapes(objective, member_cls, batch_cls, batch, epoch, rows)
            # Member by member, in its forward's order: each generator gives the bits it would give there.
            drawn = [[torch.empty(s, dtype=torch.int32, device=device).random_(generator=g) for s in shapes]
                     for g in self.noise_generators]
            noise = [torch.stack([bits[j] for bits in drawn]) for j in range(len(shapes))]
        return self._call(objective, member_cls, batch_cls, epoch, (batch, noise))

    def try_loss(self, objective, member_cls, batch_cls, data, protocol, batch_size: int, device, autocast) -> None:
        """Run the stacked loss once on a first batch (no gradients, no state or random stream
        touched); raise :class:`NotStackable` with the reason if it cannot run under ``vmap``."""
        rows = min(batch_size, data.n)
        plans = []
        for _ in self.members:
            perm = torch.arange(data.n)
            masks = protocol.apply(dict(data.mask_cpu), torch.Generator().manual_seed(0))
            plans.append((perm.to(device), {m: t.to(device) for m, t in masks.items()}))
        generators, buffers = self.noise_generators, self.buffers
        self.noise_generators = [torch.Generator(g.device).set_state(g.get_state()) for g in generators]
        self.buffers = {k: v.clone() for k, v in buffers.items()}
        shapes = dict(self._noise_shapes)
        try:
            with torch.no_grad(), autocast():
                self.loss(objective, member_cls, batch_cls, data.stacked_batch(plans, 0, rows), 0, rows, device)
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
            raise NotStackable(f"the objective's loss does not run under vmap ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        finally:
            self.noise_generators, self.buffers, self._noise_shapes = generators, buffers, shapes

    # -- per-member bookkeeping ------------------------------------------------------------------------
    @torch.no_grad()
    def clip_grad_norms(self, max_norm: float) -> None:
        """Each member's gradients scaled to a total 2-norm of at most ``max_norm`` (as ``clip_grad_norm_``)."""
        grads = [p.grad for p in self.trained().values() if p.grad is not None]
        if not grads:
            return
        e = len(self)
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(e, -1), 2, dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, 2, dim=0)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(e, *([1] * (g.dim() - 1))))

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy every member's slice into its own modules (for validation, checkpoints and the end)."""
        for i, (params, buffers) in enumerate(self._named):
            for name, p in params.items():
                p.copy_(self.params[name][i])
            for name, b in buffers.items():
                b.copy_(self.buffers[name][i])

    def keep(self, indices: Sequence[int], optimizer) -> MemberStack | None:
        """A stack of the members at ``indices`` (their state and optimizer state carried over), or None."""
        self.write_back()
        if not indices:
            optimizer.forget(list(self.trained().values()))
            return None
        index = torch.tensor(list(indices), device=next(iter(self.params.values())).device)
        new = object.__new__(MemberStack)
        new.members = [self.members[i] for i in indices]
        new.noise_generators = [self.noise_generators[i] for i in indices]
        new.group_of, new.shell, new.dropouts = self.group_of, self.shell, self.dropouts
        new._named = [self._named[i] for i in indices]
        new._noise_shapes = self._noise_shapes
        with torch.no_grad():
            new.params = {k: v.index_select(0, index).requires_grad_(k in self.group_of)
                          for k, v in self.params.items()}
            new.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}
        optimizer.replace({id(self.params[k]): (new.params[k], index) for k in self.group_of})
        return new


def _take(queue: list[torch.Tensor], shape) -> torch.Tensor:
    if not queue:
        raise RuntimeError("the forward drew more dropout noise than recorded for this batch size")
    bits = queue.pop(0)
    if tuple(bits.shape) != tuple(shape):
        raise RuntimeError(f"dropout noise shape {tuple(shape)} differs from the recorded {tuple(bits.shape)}")
    return bits
