"""Standalone MOIRAI embedding worker, run by the ``moirai`` environment's Python.

uni2ts (MOIRAI's library) pins ``torch<2.5`` and ``numpy~=1.26``, so it cannot live in the main
environment; create its own with ``conda env create -f workflow/envs/moirai.yaml`` (Snakemake does
it for the rule that declares ``conda: "envs/moirai.yaml"``). This file imports only numpy, torch and
uni2ts (never ``medmix``), so it runs there as a plain script::

    python extractors/moirai_worker.py --input series.npz --output embeddings.npz \\
        --model Salesforce/moirai-1.0-R-small --revision main [--local-files-only] \\
        [--patch-size 32] [--max-time-steps 512] [--batch-size 16] [--device auto]

Input (written by :func:`extractors.experts.moirai.export_series` in the main environment): an ``.npz`` with
``sample_ids`` (str ``[N]``), ``values`` (float32 ``[N, T, V]``, NaN = missing or left padding) and
``lengths`` (int ``[N]``, the real time steps of each sample, right-aligned). Output: an ``.npz``
with ``sample_ids`` and ``embeddings`` (float32 ``[N, d_model]``), written atomically.

Embedding rule (documented in :mod:`extractors.experts.moirai`): the sample's V variables form one
multivariate MOIRAI input (the model's "any-variate" attention, variate ids 0..V-1); each variable
is cut into non-overlapping patches of ``patch_size`` steps (left-padded to a multiple), missing
values are masked (observed mask False, value 0), the last ``max_time_steps`` steps are kept; the
encoder representations (after MOIRAI's own scaling, input projection and transformer, i.e.
``MoiraiModule.forward`` up to the distribution head) are mean-pooled over every (variate,
patch) token with at least one observed value.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import numpy as np

MAX_PATCH_DEFAULT = 128
SAFETENSORS = "model.safetensors"


def pack_series(values: np.ndarray, lengths: np.ndarray, patch_size: int, max_patch_size: int) -> dict[str, Any]:
    """MOIRAI's packed input for a batch of equally shaped multivariate series.

    ``values``: float ``[B, T, V]`` (NaN = missing, the first ``T - lengths[b]`` steps are padding).
    Returns torch tensors ``target``/``observed_mask`` ``[B, V*S, max_patch]`` and ``sample_id``,
    ``time_id``, ``variate_id``, ``prediction_mask``, ``patch_size`` ``[B, V*S]`` in MOIRAI's
    variate-major token order (as ``MoiraiForecast._convert`` lays out the context).
    """
    import torch

    batch, steps, n_var = values.shape
    pad = -steps % patch_size
    total = steps + pad
    x = np.full((batch, total, n_var), np.nan, np.float32)
    x[:, pad:] = values
    is_pad = np.ones((batch, total), bool)
    for b, length in enumerate(lengths):
        is_pad[b, total - int(length) :] = False
    observed = ~np.isnan(x) & ~is_pad[:, :, None]
    x = np.where(observed, x, 0.0).astype(np.float32)
    n_seq = total // patch_size

    def to_tokens(arr: np.ndarray) -> np.ndarray:  # [B, S*P, V] -> [B, V*S, P]
        arr = arr.reshape(batch, n_seq, patch_size, n_var).transpose(0, 3, 1, 2)
        return arr.reshape(batch, n_var * n_seq, patch_size)

    target = np.zeros((batch, n_var * n_seq, max_patch_size), np.float32)
    obs = np.zeros((batch, n_var * n_seq, max_patch_size), bool)
    target[..., :patch_size] = to_tokens(x)
    obs[..., :patch_size] = to_tokens(observed)
    real_patch = ~is_pad.reshape(batch, n_seq, patch_size).all(axis=2)  # [B, S]
    sample_id = np.tile(real_patch.astype(np.int64), (1, n_var))
    any_obs = observed.reshape(batch, n_seq, patch_size, n_var).any(axis=(2, 3))
    time_id = np.clip(np.maximum.accumulate(any_obs, axis=1).cumsum(axis=1) - 1, 0, None)
    time_id = np.tile(time_id.astype(np.int64), (1, n_var))
    variate_id = np.repeat(np.arange(n_var, dtype=np.int64), n_seq)[None].repeat(batch, axis=0)
    return {
        "target": torch.from_numpy(target),
        "observed_mask": torch.from_numpy(obs),
        "sample_id": torch.from_numpy(sample_id),
        "time_id": torch.from_numpy(time_id),
        "variate_id": torch.from_numpy(variate_id),
        "prediction_mask": torch.zeros(sample_id.shape, dtype=torch.bool),
        "patch_size": torch.full(sample_id.shape, patch_size, dtype=torch.long),
    }


def pool_tokens(reprs, packed: dict[str, Any]) -> np.ndarray:
    """Mean of the representations over real tokens with at least one observed value."""
    import torch

    keep = (packed["sample_id"] > 0) & packed["observed_mask"].any(-1)
    keep = keep.to(reprs.device).unsqueeze(-1)
    summed = torch.where(keep, reprs.float(), torch.zeros((), device=reprs.device)).sum(1)
    return (summed / keep.sum(1).clamp(min=1)).cpu().numpy().astype(np.float32)


def model_folder(source: str, revision: str | None, local_files_only: bool) -> str:
    """The folder holding ``config.json`` + ``model.safetensors`` (a local folder or the hub snapshot).

    Weights are read from safetensors only: this environment has torch<2.5, whose ``torch.load``
    must not unpickle downloaded files, so a repository with only ``pytorch_model.bin`` is refused.
    """
    folder = source
    if not os.path.isdir(source):
        from huggingface_hub import hf_hub_download

        kwargs = {"revision": revision, "local_files_only": local_files_only}
        folder = os.path.dirname(hf_hub_download(source, "config.json", **kwargs))
        hf_hub_download(source, SAFETENSORS, **kwargs)
    if not os.path.isfile(os.path.join(folder, SAFETENSORS)):
        raise FileNotFoundError(f"{folder} has no {SAFETENSORS}: MOIRAI weights are read from safetensors only "
                                "(never unpickled in this torch<2.5 environment)")
    return folder


def load_module(source: str, revision: str | None, local_files_only: bool):
    """``MoiraiModule.from_pretrained`` (uni2ts) on the safetensors folder, every tensor required."""
    from uni2ts.model.moirai import MoiraiModule

    folder = model_folder(source, revision, local_files_only)
    return MoiraiModule.from_pretrained(folder, strict=True).eval()


def encode(module, packed: dict[str, Any]):
    """``MoiraiModule.forward`` up to the encoder output (no distribution head)."""
    from uni2ts.common.torch_util import mask_fill, packed_attention_mask

    loc, scale = module.scaler(
        packed["target"],
        packed["observed_mask"] * ~packed["prediction_mask"].unsqueeze(-1),
        packed["sample_id"],
        packed["variate_id"],
    )
    scaled = (packed["target"] - loc) / scale
    reprs = module.in_proj(scaled, packed["patch_size"])
    reprs = mask_fill(reprs, packed["prediction_mask"], module.mask_encoding.weight)
    return module.encoder(
        reprs, packed_attention_mask(packed["sample_id"]), time_id=packed["time_id"], var_id=packed["variate_id"]
    )


def embed_series(
    module,
    values: np.ndarray,
    lengths: np.ndarray,
    patch_size: int = 32,
    max_time_steps: int = 512,
    batch_size: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """Embeddings ``[N, d_model]`` of ``N`` samples (``values`` ``[N, T, V]``, right-aligned)."""
    import torch

    if patch_size not in tuple(module.patch_sizes):
        raise ValueError(f"patch size {patch_size} not supported by this MOIRAI model {tuple(module.patch_sizes)}")
    values = values[:, -max_time_steps:]
    lengths = np.minimum(lengths, values.shape[1])
    module = module.to(device)
    out = np.zeros((len(values), module.d_model), np.float32)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        width = int(lengths[sel].max())
        packed = pack_series(values[sel, -width:], lengths[sel], patch_size, max(module.patch_sizes))
        packed = {k: v.to(device) for k, v in packed.items()}
        with torch.inference_mode():
            out[sel] = pool_tokens(encode(module, packed), packed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True, help="hub id or local folder of a MOIRAI 1.x checkpoint")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--local-files-only", action="store_true")
    parser.add_argument("--patch-size", type=int, default=32,
                        help="hourly data: 32 (uni2ts constraints; see moirai.py)")
    parser.add_argument("--max-time-steps", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.local_files_only:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with np.load(args.input, allow_pickle=False) as data:
        sample_ids, values, lengths = data["sample_ids"], data["values"], data["lengths"]
    module = load_module(args.model, args.revision, args.local_files_only)
    emb = embed_series(module, values, lengths, args.patch_size, args.max_time_steps, args.batch_size, device)
    folder = os.path.dirname(os.path.abspath(args.output))
    # Atomic write as medmix.store.atomic does it (this script runs where medmix is not installed):
    # temp file in the same folder -> flush/fsync -> read back -> os.replace.
    fd, tmp = tempfile.mkstemp(prefix=".moirai.", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, sample_ids=sample_ids, embeddings=emb)
            fh.flush()
            os.fsync(fh.fileno())
        with np.load(tmp, allow_pickle=False) as back:
            if back["embeddings"].shape != emb.shape or len(back["sample_ids"]) != len(sample_ids):
                raise OSError(f"moirai_worker: read-back check of {tmp} failed")
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"moirai_worker: {len(sample_ids)} samples -> {emb.shape} in {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
