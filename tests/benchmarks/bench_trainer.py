"""Benchmark the MedMIX ensemble trainer against a plain per-seed PyTorch loop.

One run, one synthetic dataset with the paper's shapes (4 modalities × 3 experts of 384–1024
dims, a teacher per modality, 3 binary tasks, ``--n`` samples), ``--seeds`` seeds, ``--epochs``
epochs (early stopping off so every variant does the same work). Each variant runs in its own
spawned process (so thread settings and peak memory are its own):

- ``plain``: per seed, a ``DataLoader`` over a ``TensorDataset`` (shuffle, batch 256),
  ``torch.optim.AdamW``, ``clip_grad_norm_``, float32 — the same model and loss;
- ``trainer-fp32`` / ``trainer-bf16``: :class:`medmix.training.trainer.EnsembleTrainer`, all
  seeds in one process, fused AdamW, tensors in memory, autocast bf16 for the second (skipped on
  CPUs without native bf16 matmuls), seeds one after another;
- ``stacked-fp32``: the same trainer with ``stack_members: true`` (the seeds as one stacked
  computation, :mod:`medmix.training.stacked`).

Reported per variant: wall time, speed-up over ``plain`` at the same thread count, achieved
matmul FLOP/s (forward + backward matmul FLOPs counted analytically, including the per-epoch
validation forward; the FLOPs the variant performs: on CPU, outside a member stack, MedMIX's
expert branches and teacher heads train on their present rows only) and its fraction of what
this machine reaches on plain ``torch.mm`` calls of exactly the same shapes, dtype and thread
count, and peak RSS (``ru_maxrss``). With CUDA the
trainer and plain loop also run on the GPU (peak memory from ``torch.cuda.max_memory_allocated``).

Usage: ``python benchmarks/bench_trainer.py [--n 2000] [--epochs 3] [--seeds 5] [--threads 1 2]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time
from typing import Any

import torch

DIMS = {"cxr": [512, 768, 1024], "note": [768, 1024, 384], "ehr": [384, 512, 768], "ct": [768, 512, 1024]}
TEACHERS = {"cxr": 1024, "note": 1536, "ehr": 1024, "ct": 1024}
N_LABELS = 3


def make_data(n: int):
    from medmix.training.synthetic import synthetic_data

    data = synthetic_data(n=n, dims=DIMS, n_labels=N_LABELS, task="multitask", teacher_dims=TEACHERS, seed=0,
                          split=(0.7, 0.15))
    return data.split_part("train"), data.split_part("val")


def params(epochs: int, precision: str, device: str, threads: int, stack: bool = False) -> dict[str, Any]:
    # The paper's schedule, except a larger lr so that the loss visibly moves in a few epochs.
    return dict(lr=1e-3, warmup_epochs=1, max_epochs=epochs, patience=10**6, precision=precision, device=device,
                threads=threads, stack_members=stack)


# --- FLOP accounting ------------------------------------------------------------------------


def present_fractions(train) -> dict[str, list[float]]:
    """Per modality: the fraction of training rows each expert is present in, then (last) the
    fraction with the modality present and its teacher available."""
    out = {}
    for m in DIMS:
        mask = train.mask[m].bool()
        teacher = mask.any(1) & train.teacher_mask[m].bool()
        out[m] = [float(f) for f in mask.float().mean(0)] + [float(teacher.float().mean())]
    return out


def matmul_shapes(batch: int, hidden: int, train: bool,
                  present: dict[str, list[float]] | None = None) -> list[tuple[int, int, int]]:
    """(M, K, N) of every matmul of one step on ``batch`` rows (forward, and backward if ``train``).

    ``present`` (:func:`present_fractions`): the step computes the expert branches and teacher
    heads on their present rows only, as MedMIX does while training on CPU outside a member stack
    (:func:`medmix.models.medmix.present_rows`); None: every row (a member stack, a GPU)."""
    from medmix.models import adapter_rank

    shapes: list[tuple[int, int, int]] = []

    def linear(fan_in: int, fan_out: int, input_grad: bool, fraction: float = 1.0) -> None:
        rows = batch if present is None or not train else max(1, round(batch * fraction))
        shapes.append((rows, fan_in, fan_out))  # y = x W^T
        if train:
            shapes.append((fan_out, rows, fan_in))  # dW = g^T x
            if input_grad:
                shapes.append((rows, fan_out, fan_in))  # dx = g W

    for m, dims in DIMS.items():
        for k, d in enumerate(dims):
            r, share = adapter_rank(d), (present or {}).get(m, [1.0] * 4)[k]
            linear(d, r, input_grad=False, fraction=share)  # the adapter's input is data
            linear(r, d, input_grad=True, fraction=share)
            linear(d, hidden, input_grad=True, fraction=share)
            linear(hidden, 1, input_grad=True)  # router
        linear(hidden, N_LABELS, input_grad=True)  # head
        linear(hidden, 1, input_grad=True)  # fusion scorer
    if train:
        for m, dt in TEACHERS.items():
            linear(dt, hidden, input_grad=False, fraction=(present or {}).get(m, [1.0] * 4)[-1])
    return shapes


def flops(shapes) -> float:
    return float(sum(2 * m * k * n for m, k, n in shapes))


def epoch_shapes(n_train: int, n_val: int, batch: int, hidden: int, present: dict[str, list[float]] | None = None):
    shapes = []
    for lo in range(0, n_train, batch):
        shapes += matmul_shapes(min(batch, n_train - lo), hidden, train=True, present=present)
    return shapes + matmul_shapes(n_val, hidden, train=False)


def reference_flops_per_s(shapes, dtype: torch.dtype, device: str, clock, repeats: int = 3) -> float:
    """FLOP/s of plain ``torch.mm`` over exactly ``shapes`` (best of ``repeats`` passes of ``clock``)."""
    mats = [(torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype))
            for m, k, n in shapes]
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t = clock()
        for a, b in mats:
            torch.mm(a, b)
        _sync(device)
        best = min(best, clock() - t)
    return flops(shapes) / best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- variants -------------------------------------------------------------------------------


def run_trainer(n: int, seeds: int, epochs: int, precision: str, device: str, threads: int,
                stack: bool = False) -> dict[str, Any]:
    from medmix.methods import create_method
    from medmix.protocols import Protocol
    from medmix.training.trainer import resolve_runtime

    train, val = make_data(n)
    method = create_method("medmix", params(epochs, precision, device, threads, stack))
    _, dtype = resolve_runtime(method.train_config)
    t, c = time.perf_counter(), time.process_time()
    method.fit(train, val, list(range(seeds)), Protocol("none"))
    _sync(device)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    curves = method.curves()
    return {"seconds": seconds, "cpu_seconds": cpu, "dtype": str(dtype or torch.float32).replace("torch.", ""),
            "final_train_loss": float(curves.groupby("seed").train_loss.last().mean()),
            "final_val_loss": float(curves.groupby("seed").val_loss.last().mean())}


def run_plain(n: int, seeds: int, epochs: int, precision: str, device: str, threads: int,
              stack: bool = False) -> dict[str, Any]:
    """The straightforward loop: one seed after the other, a DataLoader, float32."""
    from torch.utils.data import DataLoader, TensorDataset

    from medmix.methods.medmix import MedMIXObjective, MedMIXSettings, model_config
    from medmix.models import MedMIXNet, TeacherHeads
    from medmix.training.trainer import Batch, Member, TrainConfig

    if threads:
        torch.set_num_threads(threads)
    train, val = make_data(n)
    config = TrainConfig.from_params(params(epochs, "fp32", device, threads))
    objective = MedMIXObjective(train.task, MedMIXSettings.from_params(params(epochs, "fp32", device, threads)))
    mods = list(DIMS)
    tensors = [t for m in mods for t in train.x[m]] + [train.mask[m] for m in mods]
    tensors += [train.teacher[m] for m in mods] + [train.teacher_mask[m] for m in mods] + [train.y]
    sizes = [len(DIMS[m]) for m in mods]

    def to_batch(parts) -> Batch:
        parts = [p.to(device) for p in parts]
        x, i = {}, 0
        for m, k in zip(mods, sizes, strict=True):
            x[m], i = parts[i : i + k], i + k
        mask = dict(zip(mods, parts[i : i + len(mods)], strict=True))
        teacher = dict(zip(mods, parts[i + len(mods) : i + 2 * len(mods)], strict=True))
        tmask = dict(zip(mods, parts[i + 2 * len(mods) : i + 3 * len(mods)], strict=True))
        return Batch(x, mask, parts[-1], teacher, tmask)

    val_batch = to_batch([t for m in mods for t in val.x[m]] + [val.mask[m] for m in mods]
                         + [val.teacher[m] for m in mods] + [val.teacher_mask[m] for m in mods] + [val.y])
    t, c = time.perf_counter(), time.process_time()
    finals = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        cfg = model_config(train, {})
        member = Member(seed, MedMIXNet(cfg).to(device), TeacherHeads(TEACHERS, cfg.hidden_dim).to(device))
        params_ = list(member.model.parameters()) + list(member.aux.parameters())
        opt = torch.optim.AdamW(params_, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        loader = DataLoader(TensorDataset(*tensors), batch_size=config.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        for epoch in range(epochs):
            member.model.train()
            for parts in loader:
                loss, _ = objective.loss(member, to_batch(parts), epoch)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params_, config.grad_clip)
                opt.step()
            member.model.eval()
            with torch.no_grad():
                val_loss = float(objective.val_loss(member.model, val_batch))
        finals.append(val_loss)
    _sync(device)
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "dtype": "float32",
            "final_val_loss": sum(finals) / len(finals)}


def _child(kind: str, kwargs: dict[str, Any], queue) -> None:
    if kwargs["threads"]:
        torch.set_num_threads(kwargs["threads"])
    if kwargs["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = (run_plain if kind == "plain" else run_trainer)(**kwargs)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kwargs["device"].startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    dtype = torch.bfloat16 if result["dtype"] == "bfloat16" else torch.float32
    train, val = make_data(kwargs["n"])
    # Present rows only: MedMIX on CPU outside a member stack (the plain loop runs the same model).
    compact = kwargs["device"] == "cpu" and not kwargs["stack"]
    shapes = epoch_shapes(train.n, val.n, 256, 256, present_fractions(train) if compact else None)
    result["flops"] = flops(shapes) * kwargs["epochs"] * kwargs["seeds"]
    # One CPU thread: process time (immune to other processes on a shared machine); else wall time.
    single = kwargs["threads"] == 1 and kwargs["device"] == "cpu"
    result["clock"] = "cpu" if single else "wall"
    result["time"] = result["cpu_seconds"] if single else result["seconds"]
    clock = time.process_time if single else time.perf_counter
    result["ref_flops_per_s"] = reference_flops_per_s(shapes, dtype, kwargs["device"], clock)
    queue.put(result)


def run_isolated(kind: str, **kwargs) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(kind, kwargs, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-plain", action="store_true")
    args = parser.parse_args()
    from medmix.training.trainer import cpu_supports_bf16

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average before: {os.getloadavg()}")
    print(f"data: {args.n} samples, {sum(map(len, DIMS.values()))} experts {DIMS}, teachers {TEACHERS}; "
          f"{args.seeds} seeds x {args.epochs} epochs, batch 256, hidden 256\n")
    header = f"{'device':6} {'thr':>3} {'variant':14} {'dtype':8} {'wall s':>7} {'cpu s':>7} {'clock':5} " \
             f"{'speed-up':>8} {'GFLOP/s':>8} {'mm ref':>8} {'frac':>5} {'RSS MB':>7} {'GPU MB':>7} {'val loss':>8}"
    print(header)
    print("-" * len(header))
    for device in devices:
        for threads in args.threads if device == "cpu" else [0]:
            common = dict(n=args.n, seeds=args.seeds, epochs=args.epochs, device=device, threads=threads)
            results = {}
            variants = [("plain", "fp32"), ("trainer-fp32", "fp32"), ("trainer-bf16", "bf16"), ("stacked-fp32", "fp32")]
            if device == "cpu" and not cpu_supports_bf16():
                print(f"{device:6} {threads:>3} trainer-bf16   skipped: this CPU has no native bf16 matmuls")
                variants.remove(("trainer-bf16", "bf16"))
            for name, precision in variants:
                if name == "plain" and args.skip_plain:
                    continue
                kind = "plain" if name == "plain" else "trainer"
                results[name] = r = run_isolated(kind, precision=precision, stack=name.startswith("stacked"), **common)
                base = results.get("plain")
                speed = f"{base['time'] / r['time']:8.2f}" if base else f"{'-':>8}"
                achieved = r["flops"] / r["time"]
                gpu = f"{r['peak_gpu_mb']:7.0f}" if "peak_gpu_mb" in r else f"{'-':>7}"
                print(f"{device:6} {threads:>3} {name:14} {r['dtype']:8} {r['seconds']:7.2f} {r['cpu_seconds']:7.2f} "
                      f"{r['clock']:5} {speed} "
                      f"{achieved / 1e9:8.1f} {r['ref_flops_per_s'] / 1e9:8.1f} {achieved / r['ref_flops_per_s']:5.2f} "
                      f"{r['peak_rss_mb']:7.0f} {gpu} {r['final_val_loss']:8.4f}", flush=True)
    print(f"\nload average after: {os.getloadavg()}")
    print("speed-up, GFLOP/s and frac use the 'clock' column's time: process CPU time for 1-thread CPU runs "
          "(robust to other load on the machine), wall time otherwise; 'mm ref' = torch.mm on the same "
          "shapes/dtype/threads with the same clock.")


if __name__ == "__main__":
    main()
