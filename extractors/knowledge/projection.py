"""The label-free linear projection from article-embedding space into Qwen2's input embeddings.

The paper (Appendix B) maps the pooled MedCPT retrieval vector "via a learned linear projection
layer" into Qwen2-0.5B's embedding space but does not say how the layer is learned. We fit it
on the knowledge base alone, without any label, split or patient data:

- input ``x_i``: the L2-normalised article embedding of knowledge-base document ``i``;
- target ``y_i``: the mean of Qwen2's input (token) embeddings of the document's tokens
  (``"{title}\\n{text}"``, at most ``max_tokens`` tokens, no special tokens) - i.e. where the
  document's own words sit in the language model's input space;
- ridge least squares with an unpenalised bias: ``W = (Xc^T Xc + lambda I)^-1 Xc^T Yc``,
  ``b = mean(y) - mean(x) W`` with centred ``Xc, Yc`` and
  ``lambda = ridge_lambda * trace(Xc^T Xc) / d`` (scale-free; default ``ridge_lambda = 0.01``),
  solved in float64.

A soft-prompt vector ``x W + b`` therefore lies in the region of input space where real token
embeddings of medical text lie, so Qwen2 receives an input of the scale and direction it was
trained on. The fit is deterministic (closed form, float64) and saved with the index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DEFAULT_RIDGE_LAMBDA = 0.01
DEFAULT_MAX_TOKENS = 512


@dataclass
class Projection:
    weight: np.ndarray  # float32 [d_in, d_out]
    bias: np.ndarray  # float32 [d_out]
    r2: float  # fraction of target variance explained on the knowledge base

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) @ self.weight + self.bias).astype(np.float32)


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge_lambda: float = DEFAULT_RIDGE_LAMBDA) -> Projection:
    """Closed-form ridge regression ``y ~ x W + b`` (bias unpenalised), float64 internally."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"fit_ridge needs [N, d] inputs and [N, h] targets with N >= 2; got {x.shape}, {y.shape}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = float(ridge_lambda) * max(float(np.trace(gram)) / x.shape[1], 1e-12)
    weight = np.linalg.solve(gram + lam * np.eye(x.shape[1]), xc.T @ yc)
    bias = my - mx @ weight
    resid = yc - xc @ weight
    total = float((yc**2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 0.0
    return Projection(weight.astype(np.float32), bias.astype(np.float32), r2)


def token_mean_embeddings(
    lm_source: str,
    revision: str | None,
    titles: list[str],
    texts: list[str],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    model_id: str | None = None,
    offline: bool | None = None,
    expert: str | None = None,
) -> np.ndarray:
    """Mean of the language model's input-embedding rows over each document's tokens; [N, hidden].

    ``lm_source`` is a local folder or the hub id ``model_id``; ``revision`` / ``offline`` follow
    :func:`extractors.hf_common.hub_load_kwargs` (``offline`` None: ``experts.offline``); ``expert``
    is the RAG expert named in a "model unavailable" message.
    """
    from extractors.base import ModelUnavailableError, fetch_hint
    from extractors.hf_common import hub_load_kwargs, pretrained_complete

    hub = hub_load_kwargs(model_id or lm_source, revision, lm_source, "projection language model",
                          {} if offline is None else {"offline": offline})
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(lm_source, **hub)
        model = pretrained_complete(AutoModel, lm_source, "projection language model", dtype=torch.float32, **hub)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"projection language model {model_id or lm_source!r} at revision {revision!r} could not be loaded "
            f"({type(err).__name__}: {err}). {fetch_hint(expert)}") from err
    table = model.get_input_embeddings().weight.detach().float()
    out = np.zeros((len(titles), table.shape[1]), np.float32)
    for i, (title, text) in enumerate(zip(titles, texts, strict=True)):
        ids = tokenizer(f"{title}\n{text}", add_special_tokens=False, truncation=True,
                        max_length=max_tokens)["input_ids"]
        if not ids:
            raise ValueError(f"document {title!r} has no tokens under the language model's tokenizer")
        out[i] = table[torch.tensor(ids)].mean(0).numpy()
    return out


def save_projection(folder: str, projection: Projection) -> None:
    """The projection's two ``.npy`` files in ``folder`` (each written atomically)."""
    from medmix.store.atomic import atomic_path

    for name, arr in (("projection_weight.npy", projection.weight), ("projection_bias.npy", projection.bias)):
        with atomic_path(os.path.join(folder, name)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)


def load_projection(folder: str, r2: float = float("nan")) -> Projection:
    weight = np.load(os.path.join(folder, "projection_weight.npy"), allow_pickle=False)
    bias = np.load(os.path.join(folder, "projection_bias.npy"), allow_pickle=False)
    return Projection(weight.astype(np.float32), bias.astype(np.float32), r2)
