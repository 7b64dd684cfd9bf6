"""The MedMIX fusion network (paper §3.3–3.4) and its training-only teacher heads (§3.5).

One :class:`MedMIXNet` is one deployable model. Per modality ``m`` and expert ``k``:

- residual adapter ``ẽ = e + Up(GELU(Down(e)))`` with rank ``r = min(128, max(32, ⌊d/16⌋))``;
- projection ``z_k = Dropout(GELU(LayerNorm(Linear(ẽ))))`` to the shared width ``hidden_dim``;
- a missing expert's ``z_k`` is zeroed with ``torch.where`` (rows are computed independently,
  so whatever a masked slot holds, even NaN/inf, never reaches the output; the trainer zeroes
  absent rows of its data once, so finite zeros are all the weight gradients ever see there);
- a per-modality router (one ``Linear(hidden_dim, 1)`` shared by the modality's experts) scores
  every ``z_k``; absent experts get ``-1e4`` before the softmax, ``g`` is then multiplied by the
  mask, and ``z(m) = Σ g_k z_k`` (zero when no expert of ``m`` is present).

Per modality a classifier head ``Linear(hidden_dim, C)`` gives ``ℓ(m)`` and a fusion scorer
``Linear(hidden_dim, 1)`` gives ``s(m)``; absent modalities get ``-1e4``, ``w = softmax(s̃)`` is
multiplied by modality presence and ``ℓ_fused = Σ w(m) ℓ(m)``.

Choices where the paper is silent (documented here and in the report):

- ``hidden_dim`` (the paper's ``d``) defaults to 256 and dropout to 0.1;
- the adapter's non-linearity is GELU and its up-projection starts at zero, so every adapter
  starts as the identity map;
- router, head and fusion scorer are single linear layers;
- **a sample with every modality missing** has all fusion weights 0, so its fused logits are
  exactly 0: probability 0.5 per label for sigmoid tasks, the uniform distribution for
  multiclass (with ``probe_readout``: the read-out's bias, the probe's all-absent prediction).
  Nothing is NaN;
- scores and softmaxes are computed in float32 even under bf16 autocast.

Three named options go beyond the paper (all off in :class:`MedMIXConfig` / the model; the
method's defaults and the evidence are in :mod:`medmix.methods.medmix`): ``linear_readout``
(a linear path from every expert to its modality's logits, :class:`ModalityBlock`),
``probe_readout`` (instead, one linear probe of every expert and presence flag added to the fused
logits, outside the fusion weights, :class:`ProbeReadout`) and the
``fusion_mix`` buffer (``w = mix · softmax(s̃) + (1 − mix) · uniform over present modalities``,
which the fusion warm-up ramps from 0 to 1; it is 1, the paper's fusion, after the warm-up).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Score given to an absent expert or modality before a softmax (paper: -1e4).
MASK_SCORE = -1.0e4
#: Intra-modality routers a model can use (``best_single`` is a method-level choice of experts).
ROUTERS = ("learned", "uniform")


def adapter_rank(dim: int) -> int:
    """Adapter bottleneck ``r = min(128, max(32, ⌊d/16⌋))`` (paper eq. 1)."""
    if dim < 1:
        raise ValueError(f"embedding dimension must be positive, got {dim}")
    return min(128, max(32, dim // 16))


@dataclass(frozen=True)
class MedMIXConfig:
    """Everything needed to rebuild a :class:`MedMIXNet` (stored in every checkpoint)."""

    dims: dict[str, list[int]]
    n_out: int
    task: str
    hidden_dim: int = 256
    dropout: float = 0.1
    expert_names: dict[str, list[str]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    #: NOT in the paper: a linear read-out of every present expert's standardised embedding is
    #: added to its modality's logits (see :class:`ModalityBlock`); False = the paper's head.
    linear_readout: bool = False
    #: Intra-modality router: ``learned`` (the paper) or ``uniform`` (Table E7 ablation: the mean
    #: over the present experts, the router's scorer unused).
    router: str = "learned"
    #: NOT in the paper: a linear probe of every expert's standardised embedding and presence flag
    #: added to the *fused* logits (:class:`ProbeReadout`); replaces ``linear_readout``.
    probe_readout: bool = False

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        if self.probe_readout and self.linear_readout:
            raise ValueError("probe_readout replaces linear_readout: set at most one of them")
        if not self.dims:
            raise ValueError("MedMIX needs at least one modality")
        for m, ds in self.dims.items():
            if "." in m or not m:
                raise ValueError(f"modality name {m!r} must be non-empty and contain no '.'")
            if not ds:
                raise ValueError(f"modality {m!r} has no experts")
        if self.n_out < 1 or self.hidden_dim < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"bad MedMIX config: n_out={self.n_out}, hidden_dim={self.hidden_dim}, "
                             f"dropout={self.dropout}")

    @property
    def modalities(self) -> list[str]:
        return list(self.dims)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MedMIXConfig:
        raw: dict[str, Any] = json.loads(text)
        return cls(**raw)


class SeededDropout(nn.Module):
    """Dropout that draws from ``self.generator`` when one is set (per-seed reproducibility)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None
        #: Set by a member stack (:mod:`medmix.training.stacked`) during its forward: ``source(shape)``
        #: returns the bits ``generator`` would have drawn here, drawn beforehand.
        self.source = None

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                n_rows: int | None = None) -> torch.Tensor:
        """Dropout of ``x``; ``keep`` (bool, broadcastable to ``x``), if given, also zeroes where it is
        False (in the same multiply as the dropout mask when training). ``x`` may hold only the rows
        ``rows`` (long) of an ``n_rows``-row batch: the bits are then drawn for all ``n_rows`` rows and
        those rows' are used, so the masks are the ones the whole batch would get."""
        if not self.training or self.p == 0.0 or (self.source is None and self.generator is None):
            if self.training and self.p > 0.0:
                x = F.dropout(x, self.p, training=True)
            return x if keep is None else torch.where(keep, x, 0.0)
        shape = x.shape if rows is None else (int(n_rows), *x.shape[1:])
        if self.source is not None:
            bits = self.source(shape)
        else:
            # 31 random bits per element (2-3x faster than bernoulli_ on CPU); P(drop) = p ± 2^-31.
            bits = torch.empty(shape, dtype=torch.int32, device=x.device).random_(generator=self.generator)
        if rows is not None:
            bits = bits.index_select(0, rows)
        kept = bits >= int(self.p * 2**31)
        if keep is not None:
            kept = kept & keep
        # (x * kept) * scale: bit for bit x * (kept * scale), since x * 1 and x * 0 are exact.
        return (x * kept).mul_(1.0 / (1.0 - self.p))


class ExpertBranch(nn.Module):
    """Residual adapter + projection of one expert to the shared space; zero where absent."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        rank = adapter_rank(dim)
        self.adapter_down = nn.Linear(dim, rank)
        self.adapter_up = nn.Linear(rank, dim)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        self.proj = nn.Linear(dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.drop = SeededDropout(dropout)

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        """``GELU(LN(W(e + Adapter(e))))`` of every row, before dropout and the presence mask."""
        e = e + self.adapter_up(F.gelu(self.adapter_down(e)))
        return F.gelu(self.norm(self.proj(e)))

    def forward(self, e: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        rows = present_rows(e, present)
        if rows is None:
            return self.drop(self.embed(e), keep=present[:, None])
        # Only the present rows: an absent row's output is zero and sends no gradient back, so
        # computing it changes nothing but the time (its dropout bits are still drawn).
        z = self.drop(self.embed(e.index_select(0, rows)), rows=rows, n_rows=e.shape[0])
        return scatter_rows(z, rows, e.shape[0])


def present_rows(t: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows of ``t`` worth computing alone when only the ``present`` (bool ``[N]``)
    rows' results count, or None to compute every row. Only while training (gradients on:
    predictions, and the FLOPs per sample Table E6 counts on them, are those of every row, as for
    every method), on CPU (on a GPU the index would cost a synchronisation), never under ``vmap``
    (a member stack: it cannot follow data-dependent shapes), and only with some but not all rows
    present (with none, computing every row gives each parameter its zero gradient, so the
    optimiser's step stays the same)."""
    if not torch.is_grad_enabled() or t.device.type != "cpu" or torch._C._functorch.is_batchedtensor(t):
        return None
    rows = present.nonzero().squeeze(1)
    return rows if 0 < rows.numel() < t.shape[0] else None


def scatter_rows(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``[n_rows, ...]`` zeros with ``values`` at ``rows`` (differentiable in ``values``)."""
    return values.new_zeros(n_rows, *values.shape[1:]).index_copy(0, rows, values)


class ModalityBlock(nn.Module):
    """Intra-modality MoE (experts + shared router) plus the modality's head and fusion scorer.

    With ``linear_readout`` the modality's logits are ``ℓ(m) = Head(z(m)) + Σ_k mask_k R_k e_k``:
    one bias-free ``Linear(d_k, C)`` per expert, zero-initialised (so the block starts as the
    paper's), reading the expert's standardised embedding directly. The adapters, router and
    head stay as they are; the read-out gives every expert a linear path to the prediction that
    the bottleneck ``Linear(d_k, hidden_dim) → LayerNorm → GELU`` does not squeeze.
    """

    def __init__(self, dims: list[int], n_out: int, hidden_dim: int, dropout: float, linear_readout: bool = False,
                 router: str = "learned"):
        super().__init__()
        self.uniform = router == "uniform"
        self.experts = nn.ModuleList(ExpertBranch(d, hidden_dim, dropout) for d in dims)
        self.router = nn.Linear(hidden_dim, 1)
        self.head = nn.Linear(hidden_dim, n_out)
        self.scorer = nn.Linear(hidden_dim, 1)
        self.readouts = nn.ModuleList(nn.Linear(d, n_out, bias=False) for d in dims) if linear_readout else None
        for readout in self.readouts or []:
            nn.init.zeros_(readout.weight)

    def forward(self, xs: list[torch.Tensor], mask: torch.Tensor):
        zs = torch.stack([branch(x, mask[:, k]) for k, (branch, x) in enumerate(zip(self.experts, xs, strict=True))], 1)
        if self.uniform:
            gates = mask.float() / mask.float().sum(-1, keepdim=True).clamp_min(1.0)
        else:
            scores = self.router(zs).squeeze(-1).float().masked_fill(~mask, MASK_SCORE)
            gates = torch.softmax(scores, dim=-1) * mask
        z = (gates.unsqueeze(-1) * zs.float()).sum(dim=1)
        logits = self.head(z).float()
        for k, (readout, x) in enumerate(zip(self.readouts or [], xs, strict=False)):
            logits = logits + torch.where(mask[:, k:k + 1], readout(x).float(), 0.0)
        return z, gates, logits, self.scorer(z).squeeze(-1).float()


class ProbeReadout(nn.Module):
    """A linear probe inside the model: ``R(x) = b + F·flags + Σ_{m,k} mask_{m,k} R_{m,k} e_{m,k}``.

    One bias-free ``Linear(d_k, C)`` per expert (modality order, then committee order), one
    ``Linear(K, C)`` over the ``K`` 0/1 presence flags with the bias ``b`` — exactly the
    function class of :mod:`medmix.methods.linear_probe` (absent expert = 0 plus its flag), so
    its coefficients can be copied in (:meth:`load_probe`). Zero-initialised (the model then
    starts as without it).
    """

    def __init__(self, dims: dict[str, list[int]], n_out: int):
        super().__init__()
        self.experts = nn.ModuleDict({m: nn.ModuleList(nn.Linear(d, n_out, bias=False) for d in ds)
                                      for m, ds in dims.items()})
        self.flags = nn.Linear(sum(len(ds) for ds in dims.values()), n_out)
        for p in self.parameters():
            nn.init.zeros_(p)

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        flags = torch.cat([mask[m].bool() for m in self.experts], dim=1)
        logits = self.flags(flags.to(self.flags.weight.dtype)).float()
        for m, readouts in self.experts.items():
            for k, readout in enumerate(readouts):
                logits = logits + torch.where(mask[m][:, k:k + 1].bool(), readout(x[m][k]).float(), 0.0)
        return logits

    def per_modality(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, M, C]``: each modality's own terms of the read-out (its experts' embeddings and
        presence flags; the bias in none), in the read-out's modality order. They sum to
        ``forward(x, mask) − b``."""
        out, col = [], 0
        for m, readouts in self.experts.items():
            k_m = len(readouts)
            flags = mask[m].bool().to(self.flags.weight.dtype)
            part = (flags @ self.flags.weight[:, col : col + k_m].T).float()
            col += k_m
            for k, readout in enumerate(readouts):
                part = part + torch.where(mask[m][:, k:k + 1].bool(), readout(x[m][k]).float(), 0.0)
            out.append(part)
        return torch.stack(out, dim=1)

    def penalised(self) -> list[nn.Parameter]:
        """The weights an L2 penalty applies to (every weight; the bias is not penalised, as in the probe)."""
        return [p for name, p in self.named_parameters() if name != "flags.bias"]

    @torch.no_grad()
    def load_probe(self, coef: torch.Tensor, intercept: torch.Tensor) -> None:
        """Copy a probe's ``coef`` [C, Σ d_k + K] (features in :func:`probe_features` order) and ``intercept`` [C]."""
        widths = [r.in_features for rs in self.experts.values() for r in rs]
        if tuple(coef.shape) != (self.flags.out_features, sum(widths) + self.flags.in_features):
            raise ValueError(f"probe coefficients {tuple(coef.shape)} do not fit the read-out "
                             f"({self.flags.out_features}, {sum(widths)} + {self.flags.in_features})")
        parts = torch.split(coef.float(), [*widths, self.flags.in_features], dim=1)
        for readout, part in zip([r for rs in self.experts.values() for r in rs], parts, strict=False):
            readout.weight.copy_(part)
        self.flags.weight.copy_(parts[-1])
        self.flags.bias.copy_(intercept.float())


@dataclass
class MedMIXOutput:
    """``logits`` [N, C]; ``router[m]`` [N, K_m]; ``fusion`` [N, M]; ``z[m]`` [N, hidden];
    ``present`` bool [N, M] (modality has at least one expert); ``modality_logits`` [N, M, C],
    every modality head's own logits ``ℓ(m)`` (meaningless where the modality is absent)."""

    logits: torch.Tensor
    router: dict[str, torch.Tensor]
    fusion: torch.Tensor
    z: dict[str, torch.Tensor]
    present: torch.Tensor
    modality_logits: torch.Tensor | None = None


class MedMIXNet(nn.Module):
    """Deployable MedMIX model: no teacher parameters (see :class:`TeacherHeads`)."""

    def __init__(self, config: MedMIXConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleDict(
            {m: ModalityBlock(ds, config.n_out, config.hidden_dim, config.dropout, config.linear_readout, config.router)
             for m, ds in config.dims.items()}
        )
        #: Share of the learned fusion weights, the rest uniform over the present modalities
        #: (1 = the paper's fusion; the trainer lowers it during ``fusion_warmup_epochs``). A
        #: buffer, so a checkpoint taken during the warm-up predicts as it was validated.
        self.register_buffer("fusion_mix", torch.ones(()))
        #: The fused-level linear probe (``probe_readout``), or None.
        self.probe = ProbeReadout(config.dims, config.n_out) if config.probe_readout else None

    @property
    def modalities(self) -> list[str]:
        return self.config.modalities

    def router_parameters(self) -> list[nn.Parameter]:
        """The intra-modality router scorers (trained at ``router_lr_mult`` × the base rate)."""
        return [p for block in self.blocks.values() for p in block.router.parameters()]

    def probe_parameters(self) -> list[nn.Parameter]:
        """The ``probe_readout`` parameters (their own group at ``probe_lr_mult``; empty without it)."""
        return list(self.probe.parameters()) if self.probe is not None else []

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def _check(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> None:
        for m, dims in self.config.dims.items():
            if m not in x or m not in mask:
                raise KeyError(f"MedMIX input lacks modality {m!r}; model modalities: {self.modalities}")
            got = [int(t.shape[-1]) for t in x[m]]
            if got != dims or mask[m].shape[-1] != len(dims):
                raise ValueError(f"modality {m!r}: expert dims {got} / mask {tuple(mask[m].shape)} != model {dims}")

    def forward(self, x: dict[str, list[torch.Tensor]], mask: dict[str, torch.Tensor]) -> MedMIXOutput:
        self._check(x, mask)
        router, z, logits, scores, present = {}, {}, [], [], []
        for m, block in self.blocks.items():
            mk = mask[m].bool()
            z[m], router[m], logit, score = block(x[m], mk)
            logits.append(logit)
            scores.append(score)
            present.append(mk.any(dim=1))
        present_t = torch.stack(present, dim=1)
        fused_scores = torch.stack(scores, dim=1).masked_fill(~present_t, MASK_SCORE)
        fusion = torch.softmax(fused_scores, dim=-1) * present_t
        uniform = present_t.float() / present_t.float().sum(-1, keepdim=True).clamp_min(1.0)
        fusion = self.fusion_mix * fusion + (1 - self.fusion_mix) * uniform
        per_modality = torch.stack(logits, dim=1)
        fused = (fusion.unsqueeze(-1) * per_modality).sum(dim=1)
        if self.probe is not None:
            fused = fused + self.probe(x, mask)
        return MedMIXOutput(fused, router, fusion, z, present_t, per_modality)


class TeacherHeads(nn.Module):
    """Training-only linear heads ``d_T -> hidden_dim`` projecting frozen teacher embeddings."""

    def __init__(self, teacher_dims: dict[str, int], hidden_dim: int):
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Linear(d, hidden_dim) for m, d in teacher_dims.items()})

    def forward(self, teacher: dict[str, torch.Tensor],
                available: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Projected teachers; with ``available`` (bool ``[N]`` per modality) the other rows may be
        left at zero (:func:`present_rows`): the distillation terms ignore them."""
        out = {}
        for m, head in self.heads.items():
            if m not in teacher:
                continue
            rows = present_rows(teacher[m], available[m]) if available is not None and m in available else None
            out[m] = head(teacher[m]) if rows is None else scatter_rows(
                head(teacher[m].index_select(0, rows)), rows, teacher[m].shape[0])
        return out
