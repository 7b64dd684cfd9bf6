"""Helpers the MOIRAI tests run *inside* the MOIRAI test environment (numpy, torch, uni2ts only).

``python tests/moirai_env_tools.py build OUT_DIR --seed S``
    a tiny random-weight ``MoiraiModule`` (the 1.0-R architecture and config format, d_model 384 as 1.0-R-small,
    2 layers, patch sizes 8/16), saved with uni2ts's own ``save_pretrained``.

``python tests/moirai_env_tools.py reference MODEL_DIR SERIES_NPZ OUT_NPZ --ids a,b --patch-size 8``
    independent reference embeddings, one sample at a time: the packed input is laid out by hand
    from the documented rule (one token per (variable, patch), no padding), run through
    ``MoiraiModule.forward`` itself, the encoder output captured with a forward hook and averaged
    over tokens with an observed value. Needs samples whose length is a multiple of the patch
    size and whose every patch has an observation in some variable.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def build(out_dir: str, seed: int) -> None:
    from uni2ts.distribution import (
        LogNormalOutput,
        MixtureOutput,
        NegativeBinomialOutput,
        NormalFixedScaleOutput,
        StudentTOutput,
    )
    from uni2ts.model.moirai import MoiraiModule

    torch.manual_seed(seed)
    # The component mixture of the released moirai-1.0-R checkpoints; num_heads = d_model // 64.
    distr = MixtureOutput([StudentTOutput(), NormalFixedScaleOutput(), NegativeBinomialOutput(), LogNormalOutput()])
    module = MoiraiModule(distr_output=distr, d_model=384, num_layers=2, patch_sizes=(8, 16, 32, 64, 128),
                          max_seq_len=64,
                          attn_dropout_p=0.0, dropout_p=0.0, scaling=True)
    module.save_pretrained(out_dir)


def reference(model_dir: str, series_npz: str, out_npz: str, wanted: list[str], patch_size: int) -> None:
    from uni2ts.model.moirai import MoiraiModule

    module = MoiraiModule.from_pretrained(model_dir, local_files_only=True).eval()
    max_patch = max(module.patch_sizes)
    captured = []
    module.encoder.register_forward_hook(lambda _m, _args, output: captured.append(output))
    with np.load(series_npz, allow_pickle=False) as data:
        ids, values, lengths = data["sample_ids"].tolist(), data["values"], data["lengths"]
    out = np.zeros((len(wanted), module.d_model), np.float32)
    for k, sid in enumerate(wanted):
        i = ids.index(sid)
        series = values[i, values.shape[1] - int(lengths[i]) :]  # [T, V], right-aligned in the file
        steps, n_var = series.shape
        if steps % patch_size:
            raise ValueError(f"reference needs a length that is a multiple of {patch_size}, got {steps}")
        n_seq = steps // patch_size
        target = torch.zeros(1, n_var * n_seq, max_patch)
        observed = torch.zeros(1, n_var * n_seq, max_patch, dtype=torch.bool)
        time_id = torch.zeros(1, n_var * n_seq, dtype=torch.long)
        variate_id = torch.zeros(1, n_var * n_seq, dtype=torch.long)
        for v in range(n_var):
            for s in range(n_seq):
                token = v * n_seq + s
                chunk = series[s * patch_size : (s + 1) * patch_size, v]
                seen = ~np.isnan(chunk)
                target[0, token, :patch_size] = torch.from_numpy(np.where(seen, chunk, 0.0).astype(np.float32))
                observed[0, token, :patch_size] = torch.from_numpy(seen)
                time_id[0, token], variate_id[0, token] = s, v
        captured.clear()
        with torch.inference_mode():
            module(target=target, observed_mask=observed, sample_id=torch.ones_like(time_id), time_id=time_id,
                   variate_id=variate_id, prediction_mask=torch.zeros_like(time_id, dtype=torch.bool),
                   patch_size=torch.full_like(time_id, patch_size))
        reprs = captured[0][0]  # [V*S, d_model]
        out[k] = reprs[observed[0].any(-1)].mean(0).numpy()
    np.savez(out_npz, sample_ids=np.array(wanted), embeddings=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("out_dir")
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("reference")
    r.add_argument("model_dir")
    r.add_argument("series_npz")
    r.add_argument("out_npz")
    r.add_argument("--ids", required=True, help="comma-separated sample ids")
    r.add_argument("--patch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out_dir, args.seed)
    else:
        reference(args.model_dir, args.series_npz, args.out_npz, args.ids.split(","), args.patch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
