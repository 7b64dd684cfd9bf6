"""``m3care``: M3Care (Zhang, Lin, Liu, Wu & Luo, "M3Care: Learning with Missing Modalities in
Multimodal Healthcare Data", KDD 2022; reference code ``choczhang/M3Care``), on the cached expert
embeddings.

**Taken from the paper / reference code.**

- Per modality a representation ``h_m = SELU(·)`` of its input (the reference's unimodal encoders).
- *Task-guided patient similarity* per modality: a multi-kernel Gaussian similarity (3 kernels,
  bandwidths ``b·{1, 2, 4}`` with ``b`` half the mean pairwise squared distance) of a learned
  3-layer SELU MLP of ``h_m`` mixed with the same kernel of ``h_m`` itself,
  ``K_m = (1 − σ(ε_m)) K(φ_m(h_m)) + σ(ε_m) K(h_m)`` (``ε_m`` learned, initialised at −0.3),
  restricted to pairs where both patients have ``m``; the patient similarity is the mean over the
  modalities both have, ``S = Σ_m K_m / Σ_m 1[both have m]``, then a learned threshold keeps the
  strong links: ``S ← ReLU(S − σ(θ))``, plus ``σ(θ)`` (no gradient) where positive.
- *Imputation in latent space*: per modality a two-layer graph convolution (SELU) over ``S``
  aggregates ``h_m`` of similar patients; a present modality is then the adaptive mix
  ``w h̃_m + (1 − w) h_m`` with ``w = σ(W₁h̃)/(σ(W₁h̃) + σ(W₂h))``, a missing one is ``h̃_m``.
- *Fusion*: the modality tokens (plus a learned modality-type embedding) through two pre-norm
  transformer encoder layers (4 heads, then 1 head; SELU feed-forward of width 4·hidden), the
  concatenated tokens → ``Linear(M·H, 2H)`` → SELU → Dropout → linear head.
- Loss: the task loss plus ``1e-8 · Σ_m | ‖φ_m(h_m)‖ − ‖h_m‖ |`` (the reference's norm term).

**Decided here.**

- *Modality* is our modality; ``h_m = SELU(mean over the present committee experts of one linear
  projection per expert)``; ``m`` is absent when no expert of its committee is present.
- **Neighbours.** The reference builds the similarity graph over the training batch — and at test
  time over the test batch, so a prediction depends on which other patients are in its batch.
  Here training uses the batch (as the paper), and prediction uses a fixed *bank*: the
  representations of (up to ``bank_size``, default 2048, a seeded subset of) the training
  patients, recomputed with the current weights before every validation pass and stored in the
  checkpoint with the kernel bandwidths measured on it. A patient's neighbours at prediction are
  the bank plus itself, so a prediction depends on that patient alone.
- A missing modality is imputed from the neighbours that *have* it (adjacency ``S_ij·1[j has m]``;
  the reference multiplies by ``1[i has m]·1[j has m]``, which leaves a missing row with the
  graph-convolution bias only, contrary to the paper's text); each row of the adjacency is
  normalised to sum to 1 (the reference sums unnormalised, which scales with the batch size).
- Row-wise layer normalisation (no affine) replaces the reference's shared ``BatchNorm1d`` before
  the kernels: batch statistics would again tie a prediction to its batch.
- The reference's norm term leaves out its first modality (``diff0``); here every modality counts.
- A sample with no modality present has no neighbour: its tokens are the graph-convolution biases.

Params: the ``training`` keys plus ``hidden_dim``, ``dropout``, ``bank_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmix.data import TensorData
from medmix.methods import register_method
from medmix.methods.simple_fusion import SimpleFusion
from medmix.models.losses import task_loss
from medmix.models.medmix import SeededDropout
from medmix.protocols import Protocol, prefit_view
from medmix.training.trainer import Batch, Member, autocast, resolve_runtime

KERNELS = (1.0, 2.0, 4.0)
NORM_WEIGHT = 1e-8


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)


def _bandwidth(d: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Half the mean squared distance over ``pairs`` (the reference's ``kernel_mul=2, kernel_num=3``); 1 without
    pairs."""
    n = pairs.sum()
    mean = (d * pairs).sum() / n.clamp_min(1.0)
    return torch.where(n > 0, mean / 2.0, torch.ones_like(mean)).clamp_min(1e-6).detach()


def _kernel(d: torch.Tensor, bandwidth: torch.Tensor) -> torch.Tensor:
    return sum(torch.exp(-d / (bandwidth * k)) for k in KERNELS) / len(KERNELS)


class _Encoder(nn.Module):
    """Pre-norm transformer encoder layer (attention + SELU feed-forward)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.SELU(), nn.Linear(4 * hidden, hidden))
        self.drop = SeededDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.drop(self.attn(y, y, y, need_weights=False)[0])
        return x + self.drop(self.ff(self.norm2(x)))


class M3CareNet(nn.Module):
    def __init__(self, dims: dict[str, list[int]], n_out: int, hidden: int, dropout: float, n_bank: int = 0):
        super().__init__()
        self.modalities = list(dims)
        n_mod = len(self.modalities)
        self.hidden = hidden
        self.proj = nn.ModuleDict({m: nn.ModuleList(nn.Linear(d, hidden) for d in ds) for m, ds in dims.items()})
        self.simi = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.SELU(), nn.Linear(hidden, hidden),
                                                nn.SELU(),
                                                nn.Linear(hidden, hidden)) for _ in self.modalities)
        self.eps = nn.Parameter(torch.full((n_mod,), -0.3))
        self.threshold = nn.Parameter(torch.zeros(()))
        self.gcn1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in self.modalities)
        self.gcn2 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in self.modalities)
        self.w1 = nn.ModuleList(nn.Linear(hidden, 1) for _ in self.modalities)
        self.w2 = nn.ModuleList(nn.Linear(hidden, 1) for _ in self.modalities)
        self.type_emb = nn.Parameter(torch.randn(n_mod, hidden) * 0.02)
        self.enc1, self.enc2 = _Encoder(hidden, 4 if hidden % 4 == 0 else 1, dropout), _Encoder(hidden, 1, dropout)
        self.fuse = nn.Linear(n_mod * hidden, 2 * hidden)
        self.drop = SeededDropout(dropout)
        self.head = nn.Linear(2 * hidden, n_out)
        # The prediction-time neighbour bank (see the module docstring): representations h, the
        # kernel inputs, layer-1 graph outputs and presence of ``n_bank`` training patients.
        self.register_buffer("bank_h", torch.zeros(n_mod, n_bank, hidden))
        self.register_buffer("bank_g1", torch.zeros(n_mod, n_bank, hidden))
        self.register_buffer("bank_present", torch.zeros(n_bank, n_mod, dtype=torch.bool))
        self.register_buffer("bank_bandwidth", torch.ones(n_mod, 2))
        self.register_buffer("bank_ready", torch.zeros((), dtype=torch.bool))

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def extras(self, x, mask) -> dict[str, torch.Tensor]:
        return {}

    # -- pieces ------------------------------------------------------------------------------------
    def represent(self, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` ``[M, N, H]`` (0 where absent) and presence ``[N, M]``."""
        hs, present = [], []
        for m in self.modalities:
            mk = mask[m].bool()
            total = sum(torch.where(mk[:, k : k + 1], proj(x[m][k]).float(), 0.0)
                        for k, proj in enumerate(self.proj[m]))
            h = F.selu(total / mk.float().sum(1, keepdim=True).clamp_min(1.0))
            p = mk.any(1)
            hs.append(torch.where(p[:, None], h, 0.0))
            present.append(p)
        return torch.stack(hs), torch.stack(present, 1)

    def kernel_inputs(self, h: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per modality the layer-normalised ``φ_m(h_m)`` and ``h_m`` the kernels compare."""
        ln = lambda t: F.layer_norm(t, t.shape[-1:])  # noqa: E731
        return ([ln(self.simi[i](h[i])) for i in range(len(self.modalities))],
                [ln(h[i]) for i in range(len(self.modalities))])

    def similarity(self, q_in, p_in, q_present, p_present, bandwidth: torch.Tensor | None):
        """Thresholded patient similarity ``[Nq, Np]`` and the bandwidths used ``[M, 2]``."""
        num = 0.0
        den = 0.0
        used = []
        for i in range(len(self.modalities)):
            pairs = q_present[:, i : i + 1].float() * p_present[None, :, i].float()
            mix = torch.sigmoid(self.eps[i])
            ks, bws = [], []
            for j, (a, b) in enumerate(((q_in[0][i], p_in[0][i]), (q_in[1][i], p_in[1][i]))):
                d = _sq_dist(a, b)
                bw = _bandwidth(d, pairs) if bandwidth is None else bandwidth[i, j]
                ks.append(_kernel(d, bw))
                bws.append(bw)
            used.append(torch.stack(bws))
            num = num + ((1 - mix) * ks[0] + mix * ks[1]) * pairs
            den = den + pairs
        s = torch.where(den > 0, num / den.clamp_min(1.0), 0.0)
        t = torch.sigmoid(self.threshold)
        s = torch.relu(s - t)
        s = s + (s > 0).float() * t.detach()
        return s, torch.stack(used)

    def _graph(self, i: int, adj_pool: torch.Tensor, adj_self: torch.Tensor | None, pool: torch.Tensor,
               query: torch.Tensor | None, layer: nn.Linear) -> torch.Tensor:
        """One row-normalised graph convolution: ``SELU(Â · (x W) + b)`` over pool (+ self)."""
        rows = adj_pool.sum(1, keepdim=True) + (0.0 if adj_self is None else adj_self[:, None])
        agg = adj_pool @ (pool @ layer.weight.T)
        if adj_self is not None:
            agg = agg + adj_self[:, None] * (query @ layer.weight.T)
        return F.selu(agg / rows.clamp_min(1e-12) + layer.bias)

    def complete(self, h, present, s_pool, pool_h, pool_present, s_self=None, pool_g1=None):
        """Imputed / mixed modality tokens ``[N, M, H]``; returns also the layer-1 outputs."""
        tokens, g1s = [], []
        for i in range(len(self.modalities)):
            adj = s_pool * pool_present[None, :, i].float()
            a_self = None if s_self is None else s_self * present[:, i].float()
            g1 = self._graph(i, adj, a_self, pool_h[i], h[i], self.gcn1[i])
            g1_pool = g1 if pool_g1 is None else pool_g1[i]
            g2 = self._graph(i, adj, a_self, g1_pool, g1, self.gcn2[i])
            w1, w2 = torch.sigmoid(self.w1[i](g2)), torch.sigmoid(self.w2[i](h[i]))
            w = w1 / (w1 + w2)
            tokens.append(torch.where(present[:, i : i + 1], w * g2 + (1 - w) * h[i], g2))
            g1s.append(g1)
        return torch.stack(tokens, 1), torch.stack(g1s)

    def head_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        z = self.enc2(self.enc1(tokens + self.type_emb))
        return self.head(self.drop(F.selu(self.fuse(z.flatten(1))))).float()

    # -- forward -----------------------------------------------------------------------------------
    def batch_forward(self, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: the batch is its own neighbour pool (self links included). Returns logits and the norm term."""
        h, present = self.represent(x, mask)
        k_in = self.kernel_inputs(h)
        s, _ = self.similarity(k_in, k_in, present, present, None)
        tokens, _ = self.complete(h, present, s, h, present)
        norm = sum(torch.abs(torch.linalg.norm(torch.where(present[:, i : i + 1], self.simi[i](h[i]), 0.0)) -
                             torch.linalg.norm(h[i])) for i in range(len(self.modalities)))
        return self.head_logits(tokens), norm

    @torch.no_grad()
    def refresh_bank(self, x, mask) -> None:
        """Recompute the bank from the bank patients' inputs (their own batch graph, as in training)."""
        h, present = self.represent(x, mask)
        k_in = self.kernel_inputs(h)
        s, bandwidth = self.similarity(k_in, k_in, present, present, None)
        _, g1 = self.complete(h, present, s, h, present)
        self.bank_h.copy_(h)
        self.bank_g1.copy_(g1)
        self.bank_present.copy_(present)
        self.bank_bandwidth.copy_(bandwidth)
        self.bank_ready.fill_(True)

    def forward(self, x, mask) -> torch.Tensor:
        if self.training:
            return self.batch_forward(x, mask)[0]
        if not bool(self.bank_ready):
            raise RuntimeError("m3care: the neighbour bank was never computed (predict after fit or load_method)")
        h, present = self.represent(x, mask)
        q_in = self.kernel_inputs(h)
        p_in = self.kernel_inputs(self.bank_h)
        s, _ = self.similarity(q_in, p_in, present, self.bank_present, self.bank_bandwidth)
        # A patient's similarity to itself: every kernel is 1 on the modalities it has (then thresholded).
        s_self = present.any(1).float()
        t = torch.sigmoid(self.threshold)
        s_self = torch.relu(s_self - t) + (s_self - t > 0).float() * t
        tokens, _ = self.complete(h, present, s, self.bank_h, self.bank_present, s_self, self.bank_g1)
        return self.head_logits(tokens)


class _Objective:
    """Task loss + the norm term; the bank is refreshed (no gradient) before each validation pass."""

    def __init__(self, task: str, bank: TensorData, device: torch.device, dtype):
        self.task = task
        self.bank_x = {m: [t.to(device) for t in xs] for m, xs in bank.x.items()}
        self.bank_mask = {m: t.to(device) for m, t in bank.mask.items()}
        self.device, self.dtype = device, dtype
        self._stale: set[int] = set()

    def loss(self, member: Member, batch: Batch, epoch: int):
        logits, norm = member.model.batch_forward(batch.x, batch.mask)
        loss = task_loss(logits, batch.y, self.task)
        self._stale.add(id(member.model))
        return loss + NORM_WEIGHT * norm, {"task_loss": loss.detach()}

    def _fresh(self, model: M3CareNet) -> None:
        if id(model) in self._stale or not bool(model.bank_ready):
            with autocast(self.device, self.dtype):
                model.refresh_bank(self.bank_x, self.bank_mask)
            self._stale.discard(id(model))

    def val_logits(self, model: M3CareNet, batch: Batch) -> torch.Tensor:
        self._fresh(model)
        return model(batch.x, batch.mask)

    def val_loss(self, model: M3CareNet, batch: Batch) -> torch.Tensor:
        return task_loss(self.val_logits(model, batch), batch.y, self.task)


@register_method("m3care")
class M3Care(SimpleFusion):
    extra_params = ("bank_size",)

    def extra_settings(self, train: TensorData) -> dict[str, Any]:
        return {"n_bank": min(train.n, int(self.params.get("bank_size", 2048)))}

    def build(self, settings: dict[str, Any]) -> nn.Module:
        return M3CareNet(settings["dims"], settings["n_out"], settings["hidden"], settings["dropout"],
                         settings["n_bank"])

    def fit(self, train: TensorData, val: TensorData, seeds: Sequence[int], protocol: Protocol) -> None:
        n_bank = min(train.n, int(self.params.get("bank_size", 2048)))
        if n_bank < 1:
            raise ValueError(f"m3care: bank_size must be >= 1, got {self.params.get('bank_size')}")
        # One bank of training patients for every seed (a seeded choice when the split is larger).
        rows = (np.sort(np.random.default_rng(0).permutation(train.n)[:n_bank]) if n_bank < train.n
                else np.arange(train.n))
        self._bank = prefit_view(train.subset(rows), protocol)  # what the train protocol leaves of them
        super().fit(train, val, seeds, protocol)

    def objective(self, train: TensorData):
        device, dtype = resolve_runtime(self.train_config)
        return _Objective(train.task, self._bank, device, dtype)

