"""FusedAdamW and clip_grad_norm: bit-identical to torch's; training never imports torch._dynamo; RowsOnDemand."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from medmix.training.optim import FusedAdamW, clip_grad_norm
from medmix.training.trainer import RowsOnDemand


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 5), nn.GELU(), nn.Linear(5, 3), nn.Linear(3, 2))


def _groups(net: nn.Module) -> list[dict]:
    """Three groups with their own rates and decays (the trainer's lr multipliers / probe group)."""
    return [
        {"params": list(net[0].parameters()), "lr": 3e-3, "weight_decay": 1e-2},
        {"params": list(net[2].parameters()), "lr": 1e-3, "weight_decay": 0.0},
        {"params": list(net[3].parameters()), "lr": 5e-4, "weight_decay": 0.1},
    ]


def test_updates_are_bit_identical_to_torch_adamw_fused():
    ours, ref = _net(0), _net(0)
    opt = FusedAdamW(_groups(ours), lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-2)
    ref_opt = torch.optim.AdamW(_groups(ref), lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-2, fused=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(25):
        x = torch.randn(16, 7, generator=gen)
        for net, optimizer in ((ours, opt), (ref, ref_opt)):
            for k, group in enumerate(optimizer.param_groups):  # a schedule changes the rates every step
                group["lr"] = [3e-3, 1e-3, 5e-4][k] * min(1.0, (step + 1) / 10)
            head = net if step % 5 else net[:3]  # every 5th step the last layer gets no gradient
            head(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(_net(0)[0].weight, ours[0].weight)  # it did train


def test_rejects_a_parameter_in_two_groups_and_sparse_gradients():
    net = _net(0)
    with pytest.raises(ValueError, match="more than one group"):
        FusedAdamW([{"params": list(net.parameters())}, {"params": [net[0].weight]}], lr=1e-3,
                   betas=(0.9, 0.999), weight_decay=0.0)
    emb = nn.Embedding(4, 3, sparse=True)
    opt = FusedAdamW([{"params": list(emb.parameters())}], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_zero_grad_without_set_to_none_keeps_zeroed_tensors():
    net = _net(0)
    opt = FusedAdamW([{"params": list(net.parameters())}], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    net(torch.randn(2, 7)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())


def test_training_a_method_does_not_import_torch_dynamo():
    """The point of FusedAdamW: a training job's process never pays for importing torch._dynamo."""
    code = textwrap.dedent("""
        import sys
        from medmix.methods import create_method
        from medmix.protocols import Protocol
        from medmix.training.synthetic import synthetic_data
        data = synthetic_data(n=120, dims={"a": [6, 5], "b": [4]}, teacher_dims={"a": 8}, seed=0)
        method = create_method("medmix", dict(max_epochs=3, warmup_epochs=1, patience=2, batch_size=32,
                                              hidden_dim=8, precision="fp32", threads=1))
        method.fit(data.split_part("train"), data.split_part("val"), [0, 1], Protocol("none"))
        print("dynamo imported:", "torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert "dynamo imported: False" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("scale", [1e-3, 1e3])  # every gradient within the bound / far above it
def test_clip_grad_norm_gives_torchs_gradients_bit_for_bit(scale):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(7, 5), (5,), (3, 4, 2)]]
    grads = [torch.randn(p.shape) * scale for p in params]
    ours = [p.detach().clone().requires_grad_() for p in params]
    for p, q, g in zip(params, ours, grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    params.append(torch.nn.Parameter(torch.ones(2)))  # no gradient: skipped by both
    ours.append(torch.nn.Parameter(torch.ones(2)))
    expected = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    total = clip_grad_norm(ours, 1.0)
    assert torch.equal(total, expected)
    assert (float(expected) > 1.0) == (scale > 1)  # both cases are exercised
    for p, q in zip(params[:-1], ours[:-1], strict=True):
        assert torch.equal(p.grad, q.grad)


def test_rows_on_demand_gathers_each_key_once_and_only_when_read():
    source = {"a": torch.arange(12.0).view(6, 2), "b": torch.arange(6.0)}
    rows = RowsOnDemand(source, torch.tensor([4, 0]))
    assert set(rows) == {"a", "b"} and len(rows) == 2 and "a" in rows and "c" not in rows
    assert rows._rows == {}  # nothing gathered yet
    assert torch.equal(rows["a"], torch.tensor([[8.0, 9.0], [0.0, 1.0]]))
    assert rows["a"] is rows["a"] and list(rows._rows) == ["a"]
    with pytest.raises(KeyError):
        rows["c"]
