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
matmul FLOP/s and its fraction of what this machine reaches on plain ``torch.mm``/``torch.bmm``
calls of exactly the same shapes, dtype and thread count, and peak RSS (``ru_maxrss``). The FLOPs
are observed, not derived: after the timed run the variant runs again, untimed, under
:class:`MatrixProducts`, which records every matrix product it performs (forward, backward, the
per-epoch validation, the distillation's Gram matrices, only the rows a product is computed on),
and the reference times ``torch.mm`` on that recorded sequence. The two runs must end with the same
validation loss, and torch's flop counter (``FlopCounterMode``) around it must count the same
FLOPs. With CUDA the trainer and plain loop also run on the GPU (peak memory from
``torch.cuda.max_memory_allocated``).

Usage::

    python tests/benchmarks/bench_trainer.py [--n 2000] [--epochs 3] [--seeds 5] [--threads 1 2] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import resource
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


#: Operator names of matrix products (in-place and private variants included).
PRODUCT_NAME = re.compile(r"(^|_)(mm|addmm|bmm|baddbmm|mv|addmv|dot|vdot|addr|matmul|linear|einsum)($|_)")


class MatrixProducts(TorchDispatchMode):
    """Records ``(batch, M, K, N)`` of every matrix product run inside it, forward and backward (the
    dispatcher's view, below autograd and ``vmap``: the products the computation really performs).

    A product-like operator it does not know raises, so no product goes uncounted."""

    KNOWN = ("mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.KNOWN:
            a, b = args[:2] if name in ("mm", "bmm", "mv", "dot") else args[1:3]
            if a.dim() == 1:  # dot
                self.calls.append((1, 1, a.shape[0], 1))
            elif a.dim() == 2:
                self.calls.append((1, a.shape[0], a.shape[1], b.shape[1] if b.dim() == 2 else 1))
            else:
                self.calls.append((a.shape[0], a.shape[1], a.shape[2], b.shape[2]))
        elif PRODUCT_NAME.search(name):
            raise NotImplementedError(f"matrix product {func} is not counted by MatrixProducts")
        return func(*args, **(kwargs or {}))


def flops(calls) -> float:
    return float(sum(2 * e * m * k * n for e, m, k, n in calls))


def reference_flops_per_s(calls, dtype: torch.dtype, device: str, clock, repeats: int = 3, chunk: int = 256,
                          timed: int = 4096) -> float:
    """FLOP/s of plain ``torch.mm``/``torch.bmm`` on the recorded ``calls`` in their order: consecutive
    chunks of ``chunk`` products, each with its own random operands, best of ``repeats`` passes
    (after one warm-up) of ``clock``; every k-th chunk is timed, so that about ``timed`` products are."""
    chunks = [calls[i : i + chunk] for i in range(0, len(calls), chunk)]
    stride = max(1, round(len(calls) / timed))
    total_flops, total_time = 0.0, 0.0
    for part in chunks[::stride]:
        mats = [(torch.randn(e, m, k, device=device).to(dtype), torch.randn(e, k, n, device=device).to(dtype))
                for e, m, k, n in part]
        mats = [(a[0], b[0]) if a.shape[0] == 1 else (a, b) for a, b in mats]
        best = float("inf")
        for _ in range(repeats + 1):
            _sync(device)
            t = clock()
            for a, b in mats:
                torch.mm(a, b) if a.dim() == 2 else torch.bmm(a, b)
            _sync(device)
            best = min(best, clock() - t)
        total_flops += flops(part)
        total_time += best
    return total_flops / total_time


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- variants -------------------------------------------------------------------------------


def run_trainer(n: int, seeds: int, epochs: int, precision: str, device: str, threads: int,
                stack: bool = False, products: MatrixProducts | None = None) -> dict[str, Any]:
    from medmix.methods import create_method
    from medmix.protocols import Protocol
    from medmix.training.trainer import resolve_runtime

    train, val = make_data(n)
    method = create_method("medmix", params(epochs, precision, device, threads, stack))
    _, dtype = resolve_runtime(method.train_config)
    t, c = time.perf_counter(), time.process_time()
    with products or contextlib.nullcontext():
        method.fit(train, val, list(range(seeds)), Protocol("none"))
    _sync(device)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    curves = method.curves()
    return {"seconds": seconds, "cpu_seconds": cpu, "dtype": str(dtype or torch.float32).replace("torch.", ""),
            "final_train_loss": float(curves.groupby("seed").train_loss.last().mean()),
            "final_val_loss": float(curves.groupby("seed").val_loss.last().mean())}


def run_plain(n: int, seeds: int, epochs: int, precision: str, device: str, threads: int,
              stack: bool = False, products: MatrixProducts | None = None) -> dict[str, Any]:
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
    with products or contextlib.nullcontext():
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
    run = run_plain if kind == "plain" else run_trainer
    result = run(**kwargs)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kwargs["device"].startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    # The FLOPs: the same run again (untimed), every matrix product it performs recorded.
    # torch's own flop counter (medmix.pipeline.efficiency.count_flops) runs around it as a check:
    # it gives the total only, the reference below needs every product's shape.
    from medmix.pipeline.efficiency import count_flops

    products = MatrixProducts()
    again, counted = count_flops(lambda: run(**kwargs, products=products))
    if counted != flops(products.calls):
        raise RuntimeError(f"{kind}: MatrixProducts recorded {flops(products.calls):.0f} FLOPs, torch's flop "
                           f"counter {counted}: a product went unrecorded")
    if again["final_val_loss"] != result["final_val_loss"]:
        raise RuntimeError(f"{kind}: the recorded run's validation loss {again['final_val_loss']} differs from the "
                           f"timed run's {result['final_val_loss']}: the FLOPs would not be the timed run's")
    result["flops"] = flops(products.calls)
    result["products"] = len(products.calls)
    # One CPU thread: process time (immune to other processes on a shared machine); else wall time.
    single = kwargs["threads"] == 1 and kwargs["device"] == "cpu"
    result["clock"] = "cpu" if single else "wall"
    result["time"] = result["cpu_seconds"] if single else result["seconds"]
    clock = time.process_time if single else time.perf_counter
    dtype = torch.bfloat16 if result["dtype"] == "bfloat16" else torch.float32
    result["ref_flops_per_s"] = reference_flops_per_s(products.calls, dtype, kwargs["device"], clock)
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
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="default: cpu, and cuda where torch sees a GPU")
    args = parser.parse_args()
    from medmix.training.trainer import cpu_supports_bf16

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: torch sees no CUDA device here")
    products: dict[str, int] = {}
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
                products[f"{device}/{threads}/{name}"] = r["products"]
                base = results.get("plain")
                speed = f"{base['time'] / r['time']:8.2f}" if base else f"{'-':>8}"
                achieved = r["flops"] / r["time"]
                gpu = f"{r['peak_gpu_mb']:7.0f}" if "peak_gpu_mb" in r else f"{'-':>7}"
                print(f"{device:6} {threads:>3} {name:14} {r['dtype']:8} {r['seconds']:7.2f} {r['cpu_seconds']:7.2f} "
                      f"{r['clock']:5} {speed} "
                      f"{achieved / 1e9:8.1f} {r['ref_flops_per_s'] / 1e9:8.1f} {achieved / r['ref_flops_per_s']:5.2f} "
                      f"{r['peak_rss_mb']:7.0f} {gpu} {r['final_val_loss']:8.4f}", flush=True)
    print(f"\nload average after: {os.getloadavg()}")
    print("matrix products per variant (recorded): " + ", ".join(f"{k} {v:,}" for k, v in products.items()))
    print("speed-up, GFLOP/s and frac use the 'clock' column's time: process CPU time for 1-thread CPU runs "
          "(robust to other load on the machine), wall time otherwise; 'mm ref' = torch.mm on the same "
          "shapes/dtype/threads with the same clock.")


if __name__ == "__main__":
    main()
