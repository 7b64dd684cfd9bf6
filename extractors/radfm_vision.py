"""RadFM's visual path (3D ViT + perceiver resampler), written for medmix; loads RadFM's checkpoint.

RadFM (Wu et al., chaoyi-wu/RadFM) ships its model code as a GitHub repository, not a package. Its
visual tokens come from ``MyEmbedding``: a 3D ViT (``vit_3d.ViT``, after lucidrains' vit-pytorch) and
an OpenFlamingo-style ``PerceiverResampler``. This module re-implements exactly that path with the
same module and parameter names, so the ``embedding_layer.vision_encoder.*`` and
``embedding_layer.perceiver.*`` tensors of RadFM's ``pytorch_model.bin`` load with ``strict=True``
and no third-party code runs. Hyper-parameters (RadFM's ``MyEmbedding``): volume 512 x 512 x 512
(frames), patches 32 x 32 x 4, dim 768, depth 12, 8 heads of 64, MLP 2048, learned 3D position
embedding (dim // 3 per axis); perceiver depth 6, 8 heads of 64, 32 latents, FF x4, no frame or
media embeddings. Dropout is inactive (inference only).

Shapes: the ViT takes ``[B, 3, H, W, D]`` (D = axial slices, a multiple of 4) and returns tokens
``[B, (H/32)(W/32)(D/4), 768]`` in (h, w, d) order; the perceiver maps ``[B, T, F, V, 768]`` to
``[B, T, 32, 768]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RadFMVisionConfig:
    """Architecture of RadFM's visual path (defaults: the released RadFM checkpoint)."""

    image_size: int = 512
    frames: int = 512
    image_patch_size: int = 32
    frame_patch_size: int = 4
    dim: int = 768
    depth: int = 12
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 2048
    channels: int = 3
    perceiver_depth: int = 6
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    num_latents: int = 32
    perceiver_ff_mult: int = 4


class PatchRearrange(nn.Module):
    """``b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)`` (vit-pytorch's 3D patching)."""

    def __init__(self, p1: int, p2: int, pf: int):
        super().__init__()
        self.p1, self.p2, self.pf = p1, p2, pf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width, frames = x.shape
        h, w, f = height // self.p1, width // self.p2, frames // self.pf
        x = x.reshape(b, c, h, self.p1, w, self.p2, f, self.pf)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b h w f p1 p2 pf c
        return x.reshape(b, h * w * f, self.p1 * self.p2 * self.pf * c)


class PositionEmbeddingLearned3d(nn.Module):
    """Learned per-axis embeddings, concatenated; a coarser grid reads evenly spaced rows."""

    def __init__(self, num_pos_feats: int, h_patch_num: int, w_patch_num: int, d_patch_num: int):
        super().__init__()
        self.h_patch_num, self.w_patch_num, self.d_patch_num = h_patch_num, w_patch_num, d_patch_num
        self.row_embed = nn.Embedding(h_patch_num, num_pos_feats)
        self.col_embed = nn.Embedding(w_patch_num, num_pos_feats)
        self.dep_embed = nn.Embedding(d_patch_num, num_pos_feats)

    def forward(self, batch_size: int, h: int, w: int, d: int, device) -> torch.Tensor:
        if h > self.h_patch_num or w > self.w_patch_num or d > self.d_patch_num:
            raise ValueError(f"patch grid {h}x{w}x{d} exceeds the position table "
                             f"{self.h_patch_num}x{self.w_patch_num}x{self.d_patch_num}")
        i = (torch.arange(h, device=device) + 1) * (self.h_patch_num // h) - 1
        j = (torch.arange(w, device=device) + 1) * (self.w_patch_num // w) - 1
        k = (torch.arange(d, device=device) + 1) * (self.d_patch_num // d) - 1
        rows = self.row_embed(i)[:, None, None].expand(h, w, d, -1)
        cols = self.col_embed(j)[None, :, None].expand(h, w, d, -1)
        deps = self.dep_embed(k)[None, None, :].expand(h, w, d, -1)
        pos = torch.cat([rows, cols, deps], dim=-1).reshape(1, h * w * d, -1)
        return pos.expand(batch_size, -1, -1)


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden_dim, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0)) if project_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head)), PreNorm(dim, FeedForward(dim, mlp_dim))])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class ViT3D(nn.Module):
    """RadFM's ``vit_3d.ViT``: tokens and their position embeddings (no CLS token, no final norm)."""

    def __init__(self, cfg: RadFMVisionConfig):
        super().__init__()
        p, pf = cfg.image_patch_size, cfg.frame_patch_size
        if cfg.image_size % p or cfg.frames % pf or cfg.dim % 3:
            raise ValueError(f"inconsistent RadFM ViT config {cfg}")
        patch_dim = cfg.channels * p * p * pf
        self.patch_size, self.frame_patch_size = p, pf
        self.to_patch_embedding = nn.Sequential(
            PatchRearrange(p, p, pf), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, cfg.dim), nn.LayerNorm(cfg.dim)
        )
        self.pos_embedding = PositionEmbeddingLearned3d(cfg.dim // 3, cfg.image_size // p, cfg.image_size // p,
                                                        cfg.frames // pf)
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _c, height, width, frames = video.shape
        if height % self.patch_size or width % self.patch_size or frames % self.frame_patch_size:
            raise ValueError(f"volume {tuple(video.shape)} is not divisible into "
                             f"{self.patch_size}x{self.patch_size}x{self.frame_patch_size} patches")
        x = self.to_patch_embedding(video)
        pos = self.pos_embedding(b, height // self.patch_size, width // self.patch_size,
                                 frames // self.frame_patch_size, x.device)
        x = x + pos
        return self.transformer(x), pos


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``x`` ``[b, t, n, d]``, ``latents`` ``[b, t, m, d]``; keys/values = media + latents."""
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # b t n (h d) -> b h t n d
            b, t_, n, _ = t.shape
            return t.reshape(b, t_, n, self.heads, -1).permute(0, 3, 1, 2, 4)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        b, _h, t_, m, _d = out.shape
        return self.to_out(out.permute(0, 2, 3, 1, 4).reshape(b, t_, m, -1))


class PerceiverResampler(nn.Module):
    """OpenFlamingo's resampler as RadFM configures it (no frame / media-time embeddings)."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_latents: int, ff_mult: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        inner = dim * ff_mult
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                              nn.Linear(inner, dim, bias=False)),
            ])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f, v, d = x.shape
        x = x.reshape(b, t, f * v, d)
        latents = self.latents.expand(b, t, -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class RadFMVision(nn.Module):
    """``vision_encoder`` + ``perceiver`` of RadFM's ``embedding_layer``."""

    VISION_PREFIX = "embedding_layer.vision_encoder."
    PERCEIVER_PREFIX = "embedding_layer.perceiver."

    def __init__(self, cfg: RadFMVisionConfig | None = None):
        super().__init__()
        self.config = cfg or RadFMVisionConfig()
        c = self.config
        self.vision_encoder = ViT3D(c)
        self.perceiver = PerceiverResampler(c.dim, c.perceiver_depth, c.perceiver_dim_head, c.perceiver_heads,
                                            c.num_latents, c.perceiver_ff_mult)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W, D]`` in [0, 1] -> perceiver latents ``[B, num_latents, dim]``."""
        tokens, _pos = self.vision_encoder(volume)
        return self.perceiver(tokens[:, None, None])[:, 0]

    def load_radfm_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load the visual tensors of a full RadFM state dict (``strict``: every tensor must match)."""
        for module, prefix in ((self.vision_encoder, self.VISION_PREFIX), (self.perceiver, self.PERCEIVER_PREFIX)):
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not part:
                raise KeyError(f"{source} holds no {prefix}* tensors: not a RadFM checkpoint")
            module.load_state_dict(part, strict=True)
