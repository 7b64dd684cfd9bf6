"""AdamW for :class:`~medmix.training.trainer.EnsembleTrainer`, without ``torch.optim.Optimizer``.

Why not ``torch.optim.AdamW`` itself: its constructor (``Optimizer.add_param_group``, wrapped
by ``torch._disable_dynamo``) imports ``torch._dynamo`` on first use, which costs 1.3 s per
process on this project's 2-core machines (``python -c "import torch; import torch._dynamo"``
2.83 s against 1.50 s for ``import torch``). The workflow starts one process per training job
(~70 on the default config), and nothing here is compiled, so that import is pure start-up cost.

:class:`FusedAdamW` keeps the optimiser state itself and calls the very function
``torch.optim.AdamW(..., fused=True).step()`` calls for each parameter group:
``torch.optim.adam.adam`` with ``fused=True`` and ``decoupled_weight_decay=True``, with the state
initialised as ``Adam._init_group`` does (zero moments, a float32 ``step`` tensor on the
parameter's device). Updates are therefore bit-identical to ``torch.optim.AdamW(fused=True)``
(tests/test_trainer_optim.py checks this against it). Only what the trainer uses is provided:
``param_groups`` (dicts whose ``lr`` the schedule sets), :meth:`step` and :meth:`zero_grad`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.adam import adam

#: ``torch.optim.AdamW``'s default epsilon.
EPS = 1e-8


class FusedAdamW:
    """AdamW (decoupled weight decay, no AMSGrad) over parameter groups, one fused kernel per group.

    ``groups``: dicts with ``params`` and optionally ``lr`` / ``weight_decay`` (defaults: ``lr`` /
    ``weight_decay``); any other keys are kept (the trainer stores its base rates there).
    """

    def __init__(self, groups: Sequence[dict[str, Any]], lr: float, betas: tuple[float, float],
                 weight_decay: float, eps: float = EPS):
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for group in groups:
            params = list(group["params"])
            for p in params:
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one group")
                if not p.is_floating_point():
                    raise TypeError(f"FusedAdamW needs floating-point parameters, got {p.dtype}")
                seen.add(id(p))
            self.param_groups.append({**group, "params": params, "lr": float(group.get("lr", lr)),
                                      "weight_decay": float(group.get("weight_decay", weight_decay))})
        #: Per parameter: (exp_avg, exp_avg_sq, step), created at its first update.
        self.state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _state(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = self.state.get(p)
        if state is None:
            state = (torch.zeros_like(p, memory_format=torch.preserve_format),
                     torch.zeros_like(p, memory_format=torch.preserve_format),
                     torch.zeros((), dtype=torch.float32, device=p.device))
            self.state[p] = state
        return state

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (others keep their weights and state)."""
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FusedAdamW does not support sparse gradients")
                exp_avg, exp_avg_sq, step = self._state(p)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(exp_avg)
                exp_avg_sqs.append(exp_avg_sq)
                steps.append(step)
            if not params:
                continue
            adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=None, capturable=False,
                 differentiable=False, fused=True, grad_scale=None, found_inf=None,
                 has_complex=any(torch.is_complex(p) for p in params), decoupled_weight_decay=True,
                 amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=group["lr"],
                 weight_decay=group["weight_decay"], eps=self.eps, maximize=False)

    def replace(self, mapping: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Swap parameters: ``mapping[id(old)] = (new, rows)``; ``new`` takes ``old``'s place in its group
        and its state is rows ``rows`` of ``old``'s (a member stack that lost members)."""
        for group in self.param_groups:
            swapped = []
            for p in group["params"]:
                if id(p) not in mapping:
                    swapped.append(p)
                    continue
                new, rows = mapping[id(p)]
                state = self.state.pop(p, None)
                if state is not None:
                    self.state[new] = (state[0].index_select(0, rows), state[1].index_select(0, rows), state[2].clone())
                swapped.append(new)
            group["params"] = swapped

    def forget(self, params: Sequence[torch.Tensor]) -> None:
        """Drop ``params`` and their state (they are no longer trained)."""
        gone = {id(p) for p in params}
        for group in self.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in gone]
        for p in params:
            self.state.pop(p, None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)``: the same total norm and,
    bit for bit, the same gradients. On CPU the multiply is skipped when torch's clip coefficient
    ``max_norm / (norm + 1e-6)`` (computed as torch computes it) is at least 1: torch then multiplies
    every gradient by exactly 1.0, a full pass over them that changes nothing. On a GPU the check
    would cost a synchronisation, so torch's multiply always runs there."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0, False, foreach=True)
    if total.device.type == "cpu" and bool(max_norm / (total + 1e-6) >= 1.0):
        return total
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total
