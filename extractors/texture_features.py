"""Radiomics-style texture features of greyscale images (GLCM, detrended cell energy, LBP).

A helper shared by ``image_texture`` and ``ct_texture25d`` (not an expert itself); see
:mod:`extractors.experts.image_texture` for what the features mean.
"""

from __future__ import annotations

import numpy as np

GLCM_LEVELS = 16


GLCM_STEP = 1.0 / 32.0


GLCM_OFFSETS = tuple((d * dy, d * dx) for d in (1, 2) for dy, dx in ((0, 1), (-1, 1), (-1, 0), (-1, -1)))


DETREND_SIZE = 9


CELL_GRID = 4


LBP_BINS = 10


TEXTURE_DIM = 4 * len(GLCM_OFFSETS) + 2 * CELL_GRID**2 + LBP_BINS  # 74


def box_blur(images: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size`` x ``size`` window (reflect padding) of ``[B, H, W]`` images."""
    r = size // 2
    padded = np.pad(images.astype(np.float64), ((0, 0), (r, r), (r, r)), mode="reflect")
    c = np.cumsum(np.cumsum(padded, axis=1), axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    h, w = images.shape[1:]
    total = c[:, size:size + h, size:size + w] - c[:, :h, size:size + w] - c[:, size:size + h, :w] + c[:, :h, :w]
    return total / (size * size)


def _shifted_pairs(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel pairs (p, p + (dy, dx)) that both lie inside ``[B, H, W]`` images."""
    h, w = a.shape[1:]
    y0, y1 = max(0, -dy), h - max(0, dy)
    x0, x1 = max(0, -dx), w - max(0, dx)
    return a[:, y0:y1, x0:x1], a[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx]


def glcm_features(images: np.ndarray) -> np.ndarray:
    """``[B, H, W]`` in [0, 1] -> ``[B, 32]`` GLCM features of the detrended, quantised image."""
    b = images.shape[0]
    levels = GLCM_LEVELS
    detrended = images - box_blur(images, DETREND_SIZE)
    q = np.floor(detrended / GLCM_STEP + levels / 2).clip(0, levels - 1).astype(np.int64)
    i, j = np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij")
    i, j = i.ravel().astype(np.float64), j.ravel().astype(np.float64)
    out = []
    for dy, dx in GLCM_OFFSETS:
        a, c = _shifted_pairs(q, dy, dx)
        codes = (a * levels + c).reshape(b, -1) + np.arange(b)[:, None] * levels * levels
        counts = np.bincount(codes.ravel(), minlength=b * levels * levels).reshape(b, levels, levels)
        sym = (counts + counts.transpose(0, 2, 1)).reshape(b, -1).astype(np.float64)
        p = sym / sym.sum(1, keepdims=True)
        contrast = p @ ((i - j) ** 2) / (levels - 1) ** 2
        homogeneity = p @ (1.0 / (1.0 + (i - j) ** 2))
        energy = np.sqrt((p**2).sum(1))
        mu = p @ i  # symmetric: the row and column means are equal
        var = p @ (i**2) - mu**2
        cov = (p * ((i[None] - mu[:, None]) * (j[None] - mu[:, None]))).sum(1)
        # A constant (detrended) image has zero variance: its correlation is defined as 1.
        corr = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
        out.append(np.stack([contrast, homogeneity, energy, corr], axis=1))
    return np.concatenate(out, axis=1)


def _cell_means(values: np.ndarray, grid: int) -> np.ndarray:
    b, h, w = values.shape
    return values.reshape(b, grid, h // grid, grid, w // grid).mean(axis=(2, 4)).reshape(b, -1)


def lbp_histogram(images: np.ndarray) -> np.ndarray:
    """10-bin uniform LBP(8, 1) histogram (fractions) over the interior pixels."""
    centre = images[:, 1:-1, 1:-1]
    h, w = centre.shape[1:]
    ring = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))  # circular order
    bits = np.stack([images[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] >= centre for dy, dx in ring], axis=1)
    ones = bits.sum(1)
    transitions = (bits != np.roll(bits, 1, axis=1)).sum(1)
    codes = np.where(transitions <= 2, ones, LBP_BINS - 1)
    b = images.shape[0]
    flat = codes.reshape(b, -1) + np.arange(b)[:, None] * LBP_BINS
    counts = np.bincount(flat.ravel(), minlength=b * LBP_BINS).reshape(b, LBP_BINS)
    return counts / (h * w)


def texture_features(images: np.ndarray) -> np.ndarray:
    """``[B, H, W]`` greyscale in [0, 1] (H, W divisible by 4) -> ``[B, 74]`` float32."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3:
        raise ValueError(f"texture_features expects [B, H, W], got {images.shape}")
    high_pass = images - box_blur(images, 3)
    hp_rms = np.sqrt(_cell_means(high_pass**2, CELL_GRID))
    gy, gx = np.gradient(images, axis=(1, 2))
    grad = _cell_means(np.sqrt(gx**2 + gy**2), CELL_GRID)
    feats = np.concatenate([glcm_features(images), hp_rms, grad, lbp_histogram(images)], axis=1)
    return feats.astype(np.float32)

