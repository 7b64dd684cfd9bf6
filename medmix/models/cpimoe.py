"""CP-IMoE networks (collaborative-prompt interactive mixture of experts) for ``M`` modalities.

Building blocks, after the reference code's (``lijing-coder/CP-IMoE``, two modalities):

- **backbone feature** ``x_m`` ``[N, D]`` of modality ``m``: here the frozen stage-1 expert
  committee of ``m`` (every expert's embedding, absent experts zero-filled, concatenated) through
  a linear adapter to the shared width ``D``; the adapter is trained with the modality-specific
  expert in that expert's stage and frozen afterwards (the reference fine-tunes a ResNet50 there);
- :class:`FeedForward`: ``LayerNorm(x + Linear(Dropout(ReLU(Linear(x)))))``, hidden ``D/2``;
- **modality-specific expert** (one per modality): a :class:`FeedForward` on ``x_m``;
- :class:`InteractionExpert` (the *redundant* and the *synergistic* expert have this form,
  pre-trained with a pull-together resp. push-apart term): per modality an aligning
  :class:`FeedForward` ``a_m``, an interaction ``i``, per-modality sigmoid attention
  ``s_m = σ(w_m·i + b_m)`` and output ``Σ_m s_m a_m``;
- the last stage (:class:`CPIMoENet`): static prompt per presence pattern, dynamic prompt, a
  softmax router over the ``M + 2`` experts, weighted sum, decision head (FeedForward + Linear).

**The M-modality form** (the reference handles exactly two; for ``M = 2`` every definition below
reduces to the reference's when both modalities are present, and to its code in every case with
``missing_input: zero_fill``):

- interaction ``i`` = mean of ``a_i ⊙ a_j`` over the *present* pairs ``i < j`` (``M = 2``: the
  reference's ``a_1 ⊙ a_2``); absent modalities are left out of the sum ``Σ_m s_m a_m``
  (``missing_input: present_set``, default). ``zero_fill`` is the reference's treatment: an absent
  modality's feature is a zero vector that goes through every expert like a present one;
- static prompt: one vector per pattern of *missing* modalities, id ``Σ_{m absent} 2^m`` (``M = 2``:
  complete 0, first missing 1, second missing 2 — the reference's ids). Learned (``nn.Embedding``,
  default, as the issue specifies) or the reference's fixed constant vectors filled with the id
  (``static_prompt: fixed``). With more than ``max_patterns`` patterns (``2^M``) ids are hashed
  ``id mod max_patterns``;
- dynamic prompt: ``Σ_m x_m`` when every modality is present; otherwise ``Σ_{m absent} x̂_m``, where
  ``x̂_m`` is the mean over present modalities ``j`` of a learned map ``F_{j→m}(x_j)``
  (a :class:`FeedForward` per ordered pair; ``M = 2``: the reference's two maps); 0 when nothing
  is present;
- router input: ``[dynamic prompt, static prompt]`` (the reference's); ``prompts: false`` is the
  supplementary's *classic router* with the features ``[x_1, …, x_M]`` as input instead.

Expert order of the router (and of ``gate`` weights): ``specific:<m>`` for each modality, then
``redundant``, ``synergistic``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmix.models.medmix import SeededDropout

MISSING_INPUT = ("present_set", "zero_fill")
STATIC_PROMPT = ("learned", "fixed")


class FeedForward(nn.Module):
    """``LayerNorm(x + Linear(Dropout(ReLU(Linear(x)))))`` (the reference's FeedForward_MLP)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.drop = SeededDropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(self.drop(F.relu(self.fc1(x)))))


class Adapter(nn.Module):
    """A modality's committee embeddings (absent experts zero-filled) -> ``[N, D]``; 0 where the modality is absent."""

    def __init__(self, dims: Sequence[int], dim: int):
        super().__init__()
        self.proj = nn.Linear(int(sum(dims)), dim)

    def forward(self, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        cat = torch.cat([torch.where(mask[:, k : k + 1], t.float(), 0.0) for k, t in enumerate(xs)], dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), self.proj(cat), 0.0)


class InteractionExpert(nn.Module):
    """Interaction estimator over the present modalities (see the module docstring)."""

    def __init__(self, n_modalities: int, dim: int, dropout: float):
        super().__init__()
        self.align = nn.ModuleList(FeedForward(dim, dim // 2, dropout) for _ in range(n_modalities))
        self.attn = nn.ModuleList(nn.Linear(dim, 1) for _ in range(n_modalities))

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, M, D]`` (0 where absent), ``present`` bool ``[N, M]`` -> ``[N, D]``."""
        p = present.float()[:, :, None]
        a = torch.stack([f(x[:, j]) for j, f in enumerate(self.align)], dim=1) * p
        s, q = a.sum(dim=1), (a * a).sum(dim=1)
        k = p.sum(dim=1)
        pairs = (k * (k - 1) / 2).clamp_min(1.0)
        inter = (s * s - q) / 2 / pairs
        att = torch.cat([torch.sigmoid(w(inter)) for w in self.attn], dim=1)[:, :, None]
        return (att * a).sum(dim=1)


def modality_features(adapters: nn.ModuleDict, modalities: Sequence[str], x: dict[str, list[torch.Tensor]],
                      mask: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, M, D]`` backbone features and bool ``[N, M]`` modality presence."""
    present = torch.stack([mask[m].bool().any(dim=1) for m in modalities], dim=1)
    feats = torch.stack([adapters[m](x[m], mask[m]) for m in modalities], dim=1)
    return feats, present


class SpecificStageNet(nn.Module):
    """Stage ``specific_<m>``: adapter + modality-specific expert + linear head (reference: unimodal pre-training)."""

    def __init__(self, modality: str, dims: Sequence[int], dim: int, n_out: int, dropout: float):
        super().__init__()
        self.modality = modality
        self.adapter = Adapter(dims, dim)
        self.expert = FeedForward(dim, dim // 2, dropout)
        self.head = nn.Linear(dim, n_out)

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        self.expert.drop.generator = generator

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.expert(self.adapter(x[self.modality], mask[self.modality]))).float()


class InteractionStageNet(nn.Module):
    """Stages ``redundant`` / ``synergistic``: frozen adapters + interaction expert + linear head.

    :meth:`forward_all` also returns the pre-training term: ``Σ_{m present} ‖x_m − f‖₂`` (pull
    together, redundant) or ``Σ_{m present} relu(margin − ‖x_m − f‖₂)`` (push apart, synergistic),
    averaged over the batch (the reference's ``loss_pull_together`` / ``loss_push_apart``).
    """

    def __init__(self, modalities: Sequence[str], dims: dict[str, list[int]], dim: int, n_out: int, dropout: float,
                 kind: str, margin: float, missing_input: str):
        super().__init__()
        if kind not in ("redundant", "synergistic"):
            raise ValueError(f"interaction stage kind must be redundant or synergistic, got {kind!r}")
        self.modalities, self.kind, self.margin, self.missing_input = (list(modalities), kind, float(margin),
                                                                       missing_input)
        self.adapters = nn.ModuleDict({m: Adapter(dims[m], dim) for m in self.modalities})
        self.expert = InteractionExpert(len(self.modalities), dim, dropout)
        self.head = nn.Linear(dim, n_out)

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for module in self.expert.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def forward_all(self, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
        feats, present = modality_features(self.adapters, self.modalities, x, mask)
        used = present if self.missing_input == "present_set" else torch.ones_like(present)
        f = self.expert(feats, used)
        dist = torch.linalg.vector_norm(feats - f[:, None, :], dim=-1)  # [N, M]
        term = dist if self.kind == "redundant" else F.relu(self.margin - dist)
        aux = (term * present.float()).sum(dim=1).mean()
        return self.head(f).float(), aux

    def forward(self, x, mask) -> torch.Tensor:
        return self.forward_all(x, mask)[0]


def pattern_ids(present: torch.Tensor, max_patterns: int) -> torch.Tensor:
    """Static-prompt id of each sample: ``Σ_{m absent} 2^m`` (complete = 0), hashed ``mod max_patterns``."""
    weights = 2 ** torch.arange(present.shape[1], device=present.device)
    return ((~present).long() * weights).sum(dim=1) % max_patterns


class CPIMoENet(nn.Module):
    """The last stage: frozen adapters and experts; prompts, router and decision head (see module docstring)."""

    def __init__(self, modalities: Sequence[str], dims: dict[str, list[int]], dim: int, n_out: int, dropout: float,
                 *, prompts: bool = True, static_prompt: str = "learned", max_patterns: int = 64,
                 missing_input: str = "present_set"):
        super().__init__()
        if missing_input not in MISSING_INPUT:
            raise ValueError(f"missing_input must be one of {MISSING_INPUT}, got {missing_input!r}")
        if static_prompt not in STATIC_PROMPT:
            raise ValueError(f"static_prompt must be one of {STATIC_PROMPT}, got {static_prompt!r}")
        self.modalities = list(modalities)
        m = len(self.modalities)
        self.dim, self.prompts, self.missing_input = dim, bool(prompts), missing_input
        self.n_patterns = min(2**m, int(max_patterns))
        # Frozen parts (loaded from the pre-training stages).
        self.adapters = nn.ModuleDict({k: Adapter(dims[k], dim) for k in self.modalities})
        self.specific = nn.ModuleDict({k: FeedForward(dim, dim // 2, dropout) for k in self.modalities})
        self.redundant = InteractionExpert(m, dim, dropout)
        self.synergistic = InteractionExpert(m, dim, dropout)
        # Trainable parts.
        if self.prompts:
            if static_prompt == "learned":
                self.static = nn.Embedding(self.n_patterns, dim)
            else:  # the reference's constant vectors: pattern id k -> (k, k, ..., k)
                self.register_buffer("static_fixed", torch.arange(self.n_patterns, dtype=torch.float32)[:, None]
                                     .expand(self.n_patterns, dim).contiguous())
            self.maps = nn.ModuleDict({f"{a}__{b}": FeedForward(dim, dim // 2, dropout)
                                       for a in self.modalities for b in self.modalities if a != b})
        gate_in = 2 * dim if self.prompts else m * dim
        self.gate = nn.Sequential(nn.Linear(gate_in, dim), nn.ReLU(), SeededDropout(dropout), nn.Linear(dim, m + 2))
        self.decision = FeedForward(dim, dim // 2, dropout)
        self.out = nn.Linear(dim, n_out)
        self.freeze_experts()

    @property
    def expert_names(self) -> list[str]:
        return [f"specific:{m}" for m in self.modalities] + ["redundant", "synergistic"]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.adapters, self.specific, self.redundant, self.synergistic]

    def freeze_experts(self) -> None:
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for module in self.frozen_modules() for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def static_prompt(self, present: torch.Tensor) -> torch.Tensor:
        ids = pattern_ids(present, self.n_patterns)
        return self.static(ids) if hasattr(self, "static") else self.static_fixed[ids]

    def dynamic_prompt(self, feats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        complete = present.all(dim=1, keepdim=True)
        p = present.float()
        total = feats.sum(dim=1)
        filled = torch.zeros_like(total)
        for i, target in enumerate(self.modalities):
            pred = torch.zeros_like(total)
            for j, source in enumerate(self.modalities):
                if i != j:
                    pred = pred + p[:, j : j + 1] * self.maps[f"{source}__{target}"](feats[:, j])
            count = (p.sum(dim=1, keepdim=True) - p[:, i : i + 1]).clamp_min(1.0)
            filled = filled + (1.0 - p[:, i : i + 1]) * pred / count
        return torch.where(complete, total, filled)

    def forward_all(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, C]`` and router weights ``[N, M + 2]``."""
        feats, present = modality_features(self.adapters, self.modalities, x, mask)
        used = present if self.missing_input == "present_set" else torch.ones_like(present)
        experts = [torch.where(used[:, j : j + 1], self.specific[m](feats[:, j]), 0.0)
                   for j, m in enumerate(self.modalities)]
        experts += [self.redundant(feats, used), self.synergistic(feats, used)]
        if self.prompts:
            gate_in = torch.cat([self.dynamic_prompt(feats, present), self.static_prompt(present)], dim=1)
        else:
            gate_in = feats.flatten(1)
        weights = torch.softmax(self.gate(gate_in).float(), dim=-1)
        fused = (torch.stack(experts, dim=1) * weights[:, :, None]).sum(dim=1)
        return self.out(self.decision(fused)).float(), weights

    def forward(self, x, mask) -> torch.Tensor:
        return self.forward_all(x, mask)[0]

    def extras(self, x, mask) -> dict[str, torch.Tensor]:
        return {"gate": self.forward_all(x, mask)[1]}


def training_step_cost(net: CPIMoENet, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor],
                       y: torch.Tensor, task: str, *, full: bool) -> dict[str, float]:
    """Trainable parameters and FLOPs of one training step (forward, loss, backward) on the batch,
    counted by ``torch.utils.flop_counter.FlopCounterMode``: the last stage (experts frozen) or
    ``full`` training of the same network (every parameter trainable). Works on a copy."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from medmix.models.losses import task_loss

    net = copy.deepcopy(net).float().train()
    for p in net.parameters():
        p.requires_grad_(full)
    if not full:
        for p in net.trainable_parameters():
            p.requires_grad_(True)
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = task_loss(net(x, mask), y, task)
        loss.backward()
    n = int(y.shape[0])
    return {"trainable_params": float(n_train), "flops_per_step": float(counter.get_total_flops()), "batch": float(n)}
