"""Synthetic cached-embedding datasets with a known structure, for tests and benchmarks.

A latent ``h ~ N(0, I_L)`` drives the labels (``y_c = 1[h·b_c + ε > 0]``). An *informative*
expert embeds ``h`` linearly plus noise, a *noise* expert is pure Gaussian noise, and an optional
teacher per modality embeds ``h`` with little noise. Modalities and experts go missing at random.
"""

from __future__ import annotations

import numpy as np
import torch

from medmix.data import TensorData


def synthetic_data(
    n: int = 600,
    dims: dict[str, list[int]] | None = None,
    informative: dict[str, list[int]] | None = None,
    n_labels: int = 2,
    task: str = "multilabel",
    missing_modality: float = 0.2,
    missing_expert: float = 0.1,
    teacher_dims: dict[str, int] | None = None,
    noise: float = 1.0,
    latent_dim: int = 8,
    split: tuple[float, float] = (0.6, 0.2),
    seed: int = 0,
) -> TensorData:
    """Build a :class:`TensorData`; ``informative[m]`` lists the informative experts of ``m``
    (default: every expert); ``split`` gives the train and val fractions (rest is test)."""
    rng = np.random.default_rng(seed)
    dims = dims or {"a": [64, 32], "b": [48]}
    informative = informative if informative is not None else {m: list(range(len(ds))) for m, ds in dims.items()}
    h = rng.standard_normal((n, latent_dim)).astype(np.float32)
    logits = h @ rng.standard_normal((latent_dim, n_labels)).astype(np.float32)
    if task == "multiclass":
        y = np.eye(n_labels, dtype=np.float32)[logits.argmax(1)]
    else:
        y = (logits + 0.3 * rng.standard_normal(logits.shape) > 0).astype(np.float32)
    x, mask, names, roles = {}, {}, {}, {}
    for m, ds in dims.items():
        modality_present = rng.random(n) >= missing_modality
        blocks, present = [], []
        for k, d in enumerate(ds):
            e = noise * rng.standard_normal((n, d)).astype(np.float32)
            if k in informative.get(m, []):
                e += h @ rng.standard_normal((latent_dim, d)).astype(np.float32)
            p = modality_present & (rng.random(n) >= missing_expert)
            e[~p] = 0.0
            blocks.append(torch.from_numpy(e))
            present.append(p)
        x[m] = blocks
        mask[m] = torch.from_numpy(np.stack(present, axis=1))
        names[m] = [f"{m}_expert{k}" + ("_informative" if k in informative.get(m, []) else "_noise")
                    for k in range(len(ds))]
        roles[m] = ["general"] * len(ds)
    teacher, teacher_mask = {}, {}
    for m, d in (teacher_dims or {}).items():
        t = (h @ rng.standard_normal((latent_dim, d)).astype(np.float32)
             + 0.1 * rng.standard_normal((n, d)).astype(np.float32))
        present = mask[m].numpy().any(axis=1)
        t[~present] = 0.0
        teacher[m] = torch.from_numpy(t)
        teacher_mask[m] = torch.from_numpy(present)
    n_train, n_val = int(split[0] * n), int(split[1] * n)
    part = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    labels = [f"label{c}" for c in range(n_labels)]
    ids = [f"s{i:05d}" for i in range(n)]
    return TensorData(ids, task, labels, x, mask, names, roles, torch.from_numpy(y), part, teacher, teacher_mask)
