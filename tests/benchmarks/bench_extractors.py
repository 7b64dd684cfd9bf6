"""Extractor throughput: the full pipeline versus pure ``embed_batch`` on pre-prepared inputs.

For each expert (default: ``minilm_l6`` on real MedlinePlus texts and ``image_texture`` on
generated PNG files), on the same inputs in one run:

- *pipeline*: :func:`extractors.runner.run_extraction` (read + prepare + embed + Parquet write),
  the model already loaded;
- *embed only*: ``embed_batch`` over the same inputs, prepared beforehand, in the runner's
  batch order.

The ratio pipeline / embed-only is the fraction of the model's throughput the pipeline keeps
(goal >= 0.8). The process sets glibc's malloc thresholds as an extraction job does
(:func:`medmix.pipeline.malloc.tune_malloc`): without them the same numpy embed ran at either of
two speeds, 2x apart, from one process to the next. Usage::

    python tests/benchmarks/bench_extractors.py [--n-texts 300] [--n-images 1500] [--num-workers 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from extractors.registry import create_extractor
from extractors.runner import run_extraction

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def medlineplus_texts(n: int) -> list[str]:
    folder = SHARED / "medlineplus"
    if not folder.is_dir():
        raise SystemExit(f"MedlinePlus documents not found at {folder} (needs ../shared/data)")
    texts = []
    for path in sorted(folder.glob("*.xml")):
        texts += [re.sub(r"\s+", " ", a).strip() for a in re.findall(r"<Answer>(.*?)</Answer>", path.read_text(), re.S)]
        if len(texts) >= n:
            break
    return texts[:n]


def png_images(folder: Path, n: int, size: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    paths = []
    for k in range(n):
        arr = (0.5 + 0.2 * np.sin(2 * np.pi * (k % 7 + 1) * xx) * np.cos(2 * np.pi * yy)
               + 0.05 * rng.standard_normal((size, size)))
        path = folder / f"img{k:05d}.png"
        Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def tiny_dinov2(folder: Path, layers: int = 1) -> str:
    """A random-weight DINOv2 of the real architecture (``layers`` layers at ViT-B width 768; 12 with
    ViT-B's MLP is DINOv2-B's compute) plus the model-card image processor, saved like a hub
    snapshot, for ``dinov2_base`` with ``local_dir``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                          intermediate_size=768 if layers == 1 else 3072,
                          patch_size=14, image_size=224)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                      do_center_crop=True, resample=3, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_convert_rgb=True).save_pretrained(folder)
    return str(folder)


def bench(name: str, values: list, out: Path, batch_size: int, num_workers: int, repeats: int,
          **settings) -> dict:
    extractor = create_extractor(name, {"batch_size": batch_size, "num_workers": num_workers, **settings})
    extractor.load()
    ids = [f"s{k}" for k in range(len(values))]
    run_extraction(extractor, ids[:8], values[:8], str(out))  # warm-up (lazy tokenizer, caches)
    prepared = [extractor.prepare(v) for v in values]
    order = sorted(range(len(prepared)), key=lambda i: extractor.sort_key(prepared[i]))
    pipeline, embed = [], []
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        t = time.perf_counter()
        run_extraction(extractor, ids, values, str(out))
        pipeline.append(time.perf_counter() - t)
        t = time.perf_counter()
        for start in range(0, len(order), batch_size):
            extractor.embed_batch([prepared[i] for i in order[start : start + batch_size]])
        embed.append(time.perf_counter() - t)
    n = len(values)
    full, pure = n / min(pipeline), n / min(embed)
    return {"expert": name, "n": n, "pipeline": full, "embed": pure, "ratio": full / pure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--n-images", type=int, default=1500)
    parser.add_argument("--image-size", type=int, default=64, help="side of the generated PNGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--experts", nargs="*", default=["minilm_l6", "image_texture"],
                        choices=["minilm_l6", "image_texture"])
    parser.add_argument("--tiny-dinov2", action="store_true",
                        help="also dinov2_base with a tiny random-weight DINOv2 (real code path, 224 px input)")
    parser.add_argument("--dinov2-layers", type=int, default=1,
                        help="layers of that DINOv2 (12: the compute of DINOv2-B, e.g. on a GPU)")
    parser.add_argument("--dinov2-images", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    from medmix.pipeline.malloc import tune_malloc

    tune_malloc()  # as workflow/scripts/extract.py does
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = medlineplus_texts(args.n_texts) if "minilm_l6" in args.experts else []
        images = png_images(tmp, args.n_images, args.image_size)
        for name, values in (("minilm_l6", texts), ("image_texture", images)):
            if name not in args.experts:
                continue
            rows.append(bench(name, values, tmp / f"{name}.parquet", args.batch_size, args.num_workers, args.repeats))
        if args.tiny_dinov2:
            local = tiny_dinov2(tmp / "tiny_dinov2", args.dinov2_layers)
            rows.append(bench("dinov2_base", images[: args.dinov2_images], tmp / "dinov2.parquet", args.batch_size,
                              args.num_workers, args.repeats, local_dir=local))
            rows[-1]["expert"] = f"dinov2 ({args.dinov2_layers}L)"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"\ndevice: {device}; torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, num_workers "
          f"{args.num_workers}, "
          f"batch {args.batch_size}, images {args.image_size}px PNG, texts: MedlinePlus answers")
    print(f"{'expert':<16}{'n':>6}{'pipeline/s':>12}{'embed-only/s':>14}{'ratio':>8}")
    for r in rows:
        print(f"{r['expert']:<16}{r['n']:>6}{r['pipeline']:>12.1f}{r['embed']:>14.1f}{r['ratio']:>8.2f}")


if __name__ == "__main__":
    main()
