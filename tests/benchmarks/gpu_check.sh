#!/usr/bin/env bash
# GPU check of the scale-out path (about 3-5 min on one data-centre GPU; nothing is downloaded):
#  1. what an extraction / training job picks on this node (device, autocast dtype, batch sizes);
#  2. one image expert's extraction throughput, full pipeline (read + prepare in DataLoader
#     workers + pinned-memory copy + bf16 forward + Parquet write) versus pure model forward on
#     prepared inputs: dinov2_base's code path with a random-weight DINOv2 of DINOv2-B's size
#     (12 layers, width 768; no weights can be downloaded), 224 px inputs;
#  3. the ensemble trainer (all seeds in one process, bf16 on CUDA) versus a plain per-seed loop.
# Usage (repository root, the medmix environment active): bash tests/benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
PY="${PYTHON:-python}"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device on this machine; nothing to measure" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== 1. device selection per job"
"$PY" - <<'PY'
import torch

from extractors.job import default_batch_size
from medmix.training.trainer import TrainConfig, resolve_runtime

print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("trainer (device: auto, precision: auto):", resolve_runtime(TrainConfig()))
for name in ("dinov2_base", "biomedclip", "qwen2_7b", "image_texture"):
    print(f"batch size {name}: {default_batch_size(name, {})} (cpu: {default_batch_size(name, {'device': 'cpu'})})")
PY
echo "== 2. extraction throughput: pipeline vs pure forward (dinov2_base code path, DINOv2-B size)"
timeout 120 "$PY" tests/benchmarks/bench_extractors.py --experts --tiny-dinov2 --dinov2-layers 12 \
    --n-images 3000 --dinov2-images 3000 --image-size 224 --batch-size 256 --num-workers 8 --repeats 2
echo "== 3. trainer: ensemble (bf16) vs plain per-seed loop, on the GPU (each variant runs twice: timed, then"
echo "   untimed with its matrix products recorded; the CPU rows are in tests/benchmarks/README.md)"
timeout 240 "$PY" tests/benchmarks/bench_trainer.py --n 20000 --epochs 5 --seeds 5 --devices cuda
