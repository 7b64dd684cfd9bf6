"""Deployment cost of one fitted fusion model (Table E6 / Fig. 5): parameters, FLOPs, peak memory.

Counted for **one seed's** model (the seeds are ensemble members trained separately; a deployed
model is one of them), on a batch of the validation split:

* ``params``: tensor elements of one seed's exported state (:meth:`FusionMethod.export`), unless
  the method counts its own (:meth:`FusionMethod.cost`): ``linear_probe`` the coefficient and
  intercept elements, ``gbdt`` the split thresholds plus leaf values over all trees.
* ``flops_per_sample``: torch methods: :class:`torch.utils.flop_counter.FlopCounterMode` around
  ``predict`` (matrix products and convolutions, 2 per multiply-add; element-wise ops are not
  counted), divided by the batch size and by the number of seeds ``predict`` runs (each seed's
  network runs the same computation). A method with its own :meth:`~FusionMethod.cost` counts
  them itself (``linear_probe``: ``2·D·C``; ``gbdt``: threshold comparisons); ``flops_kind``
  says which.
* ``peak_mem_bytes``: one seed's state bytes + the batch's input bytes + the peak of the memory
  ``predict`` allocates. CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` (less what was allocated before). CPU, torch methods: the peak of
  live tensor storage created during ``predict`` (:class:`PeakLiveTensors`); numpy methods
  (``FusionMethod.numpy_predict``: ``gbdt``, ``linear_probe``): the ``tracemalloc`` peak (numpy reports its buffers
  there; what LightGBM's C++ code allocates internally is not seen). These are upper bounds for one seed's
  activations where ``predict`` keeps earlier seeds' (small) outputs alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

#: Rows of the validation split the cost is measured on (fewer where the split is smaller).
COST_BATCH = 256


def state_params(state: Mapping[str, torch.Tensor]) -> int:
    """Tensor elements of one exported state (buffers included: what a deployed model loads)."""
    return int(sum(t.numel() for t in state.values()))


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()``'s result and the FLOPs torch's flop counter sees in it (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return out, int(counter.get_total_flops())


class PeakLiveTensors:
    """Context manager: peak bytes of tensor storage created inside it and still alive.

    A :class:`~torch.utils._python_dispatch.TorchDispatchMode` adds each output tensor's storage
    bytes (keyed by the storage's data pointer, counted once however many views share it) and
    subtracts them when the last tensor referring to it is released (``weakref.finalize``).
    Storage created before entering (parameters, inputs) is not counted.
    """

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # data_ptr -> [bytes, live tensors]
        self._mode = None

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr == 0 or size == 0:
            return
        entry = self._refs.get(ptr)
        if entry is None:
            entry = self._refs[ptr] = [size, 0]
            self.current += size
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._refs[ptr]

    def __enter__(self) -> PeakLiveTensors:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for leaf in tree_leaves(out):
                    if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu":
                        tracker._track(leaf)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def measure_peak(fn: Callable[[], Any], device: torch.device | str, numpy_method: bool = False) -> tuple[Any, int, str]:
    """``fn()``'s result, the peak bytes it allocated and how that was measured."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, int(torch.cuda.max_memory_allocated(device) - before), "cuda max_memory_allocated"
    if numpy_method:
        import tracemalloc

        tracemalloc.start()
        try:
            out = fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return out, int(peak), "cpu tracemalloc peak (numpy buffers)"
    with PeakLiveTensors() as tracker:
        out = fn()
    return out, int(tracker.peak), "cpu peak live tensor storage"


def batch_bytes(data) -> int:
    """Bytes of a :class:`~medmix.data.TensorData` batch's inputs (embeddings and masks)."""
    tensors = [t for xs in data.x.values() for t in xs] + list(data.mask.values())
    return int(sum(t.numel() * t.element_size() for t in tensors))


# ----------------------------------------------------------------------------- one fitted method
def method_cost(model, batch, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The cost record of one seed of a fitted :class:`~medmix.methods.base.FusionMethod` on ``batch``."""
    _, states = model.export()
    n_seeds, n = max(1, len(model.seeds)), batch.n
    _, activation, how = measure_peak(lambda: model.predict(batch), device, model.numpy_predict)
    record: dict[str, Any] = {"batch_size": n, "device": str(device), "seeds_in_predict": n_seeds}
    own = model.cost(batch)  # the method's own count (FusionMethod.cost), else torch's below
    if own is not None:
        record.update(own)
    else:
        _, flops = count_flops(lambda: model.predict(batch))
        record.update({"params": state_params(states[0]), "flops_per_sample": flops / n / n_seeds if n else 0.0,
                       "flops_kind": "flops"})
        record["params_note"] = "tensor elements of one seed's exported state"
        record["flops_note"] = "torch FlopCounterMode (matmul/conv; element-wise ops not counted)"
    param_bytes = state_bytes(states[0])
    inputs = batch_bytes(batch) if torch.device(device).type == "cpu" else 0
    record.update({"param_bytes": param_bytes, "activation_peak_bytes": activation,
                   "peak_mem_bytes": param_bytes + inputs + activation, "memory_method": how})
    return record


def predict_device(model) -> torch.device:
    """The device a fitted method predicts on (its training runtime's; numpy methods: the CPU)."""
    config = getattr(model, "train_config", None)
    if config is None or model.numpy_predict:
        return torch.device("cpu")
    from medmix.training.trainer import resolve_device

    return resolve_device(config.device)


def fit_cost(model, val, batch: int = COST_BATCH) -> dict[str, Any]:
    """:func:`method_cost` on the first ``batch`` rows of the validation split ``val``."""
    return method_cost(model, val.subset(np.arange(min(batch, val.n))), predict_device(model))
