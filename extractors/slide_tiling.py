"""Whole-slide tiling shared by the slide experts (a helper, not an expert): tile, encode, mean-pool.

``biomedclip_slide`` / ``dinov2_slide`` / ``dinov3_slide`` (registered next to their image
experts in ``biomedclip.py`` / ``dinov2.py`` / ``dinov3.py``) mix :class:`SlideExpert` into the
``biomedclip`` / ``dinov2_base`` / ``dinov3_vitl`` classes (same weights, same per-image preprocessing and
forward); only the tiling differs. Documented preprocessing (the ``preprocessing`` settings):

* the slide is the RGB image :func:`extractors.inputs.read_slide` returns (a pyramid reader that
  picks a magnification plugs in there);
* non-overlapping ``tile_size`` x ``tile_size`` tiles (224 px, stride ``stride`` = 224) on a
  regular grid from the top-left corner; partial tiles at the right/bottom edge are dropped; a
  slide smaller than one tile is used whole as a single tile;
* background filter: a pixel is tissue when its HSV saturation ``(max-min)/max`` is at least
  ``tissue_saturation`` (0.07) and its mean RGB is below ``background_brightness`` (235); a tile
  is kept when its tissue fraction is at least ``min_tissue_fraction`` (0.25). A slide with no
  such tile is recorded as absent (reason logged), never silently replaced;
* at most ``max_tiles`` (256) tiles: if more pass the filter, an evenly spaced subset in raster
  order is kept (deterministic, covers the whole slide);
* each tile goes through the image expert's own preprocessing and network; the slide embedding
  is the mean of its tile embeddings.

``prepare`` validates the slide and records tile coordinates only; the pixels are read again at
embedding time, so a cohort of large slides is never held in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from extractors.base import InputError
from extractors.inputs import read_slide
from extractors.registry import ExpertSpec

TILING = {
    "tile_size": 224,
    "stride": 224,
    "tissue_saturation": 0.07,
    "background_brightness": 235,
    "min_tissue_fraction": 0.25,
    "max_tiles": 256,
    "pooling": "mean over tiles",
}


@dataclass(frozen=True)
class SlideTiles:
    """A validated slide: its path and the (left, top, size) boxes of the tiles to encode."""

    path: str
    boxes: tuple[tuple[int, int, int], ...]


def tissue_fraction_grid(rgb: np.ndarray, tile: int, stride: int, saturation: float, brightness: float):
    """Tissue fraction of every grid tile of an ``[H, W, 3]`` uint8 image -> (fractions, lefts, tops)."""
    high = rgb.max(axis=2).astype(np.float32)
    low = rgb.min(axis=2).astype(np.float32)
    sat = (high - low) / np.maximum(high, 1.0)
    tissue = (sat >= saturation) & (rgb.mean(axis=2, dtype=np.float32) < brightness)
    h, w = tissue.shape
    tops = np.arange(0, h - tile + 1, stride)
    lefts = np.arange(0, w - tile + 1, stride)
    # Summed-area table: the tissue count of every tile in O(1).
    sat_table = np.zeros((h + 1, w + 1), np.int64)
    sat_table[1:, 1:] = tissue.cumsum(0).cumsum(1)
    t0, l0 = tops[:, None], lefts[None, :]
    counts = sat_table[t0 + tile, l0 + tile] - sat_table[t0, l0 + tile] - sat_table[t0 + tile, l0] + sat_table[t0, l0]
    return counts / float(tile * tile), lefts.tolist(), tops.tolist()


def select_tiles(rgb: np.ndarray, pre: dict[str, Any]) -> tuple[tuple[int, int, int], ...]:
    """Tile boxes of one slide image under the documented tiling rule."""
    tile, stride = int(pre["tile_size"]), int(pre["stride"])
    h, w = rgb.shape[:2]
    if h < tile or w < tile:
        return ((0, 0, -1),)  # the whole (small) slide as one tile
    frac, lefts, tops = tissue_fraction_grid(
        rgb, tile, stride, float(pre["tissue_saturation"]), float(pre["background_brightness"])
    )
    keep = [(lefts[j], tops[i], tile) for i in range(len(tops)) for j in range(len(lefts))
            if frac[i, j] >= float(pre["min_tissue_fraction"])]
    limit = int(pre["max_tiles"])
    if len(keep) > limit:
        keep = [keep[k] for k in np.linspace(0, len(keep) - 1, limit).round().astype(int)]
    return tuple(keep)


class SlideExpert:
    """Mixin over an image expert class: slide -> tiles -> image expert -> mean over tiles."""

    def prepare(self, value: Any) -> SlideTiles:
        image = read_slide(value)
        boxes = select_tiles(np.asarray(image), self.settings.preprocessing)
        if not boxes:
            raise InputError(
                f"slide {value}: no tile with tissue fraction >= {self.settings.preprocessing['min_tissue_fraction']}"
            )
        return SlideTiles(str(value), boxes)

    def sort_key(self, prepared: SlideTiles) -> int:
        return len(prepared.boxes)

    def tile_pixels(self, slide: SlideTiles) -> np.ndarray:
        image = read_slide(slide.path)
        crops = [image if size < 0 else image.crop((x, y, x + size, y + size)) for x, y, size in slide.boxes]
        return np.stack([self.preprocess_image(c) for c in crops])

    def embed_batch(self, batch: list[SlideTiles]) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), np.float32)
        for k, slide in enumerate(batch):
            out[k] = self.encode_pixels(self.tile_pixels(slide)).mean(axis=0)
        return out


def slide_spec(name: str, base: type, role: str, paper_name: str, mem_mb: int) -> ExpertSpec:
    spec = base.spec
    return ExpertSpec(
        name=name,
        kinds=("slide",),
        role=role,
        dim=spec.dim,
        hub_id=spec.hub_id,
        params=spec.params,
        cost_note=f"weights of {spec.name}: {spec.cost_note or 'not declared'}; FLOPs per slide "
                  "(many tiles) not declared",
        revision=spec.revision,
        preprocessing={**TILING, "tile_preprocessing": dict(spec.preprocessing)},
        paper_name=paper_name,
        description=f"{spec.name} on tissue tiles of the slide, mean over tiles.",
        gpu=True,
        mem_mb=mem_mb,
        gpu_mem_mb=spec.gpu_mem_mb,
        # One slide is many tiles (a batch of tiles per forward): few slides per batch.
        batch_sizes={"cpu": 1, "cuda": 4},
    )


