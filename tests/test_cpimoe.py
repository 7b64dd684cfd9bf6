"""CP-IMoE (issue 14): frozen stages, parameter count, static prompts, mask semantics, the missing
grid protocol, learning with 2 / 3 / 4 modalities, stage outputs on disk, tables and costs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medmix.evaluation.cpimoe_tables import cell_metrics
from medmix.methods import create_method, is_known_method, load_method
from medmix.models.cpimoe import CPIMoENet, pattern_ids, training_step_cost
from medmix.protocols import Protocol
from medmix.training import cpimoe_stages as stages
from medmix.training.synthetic import synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(lr=3e-3, warmup_epochs=1, max_epochs=12, patience=4, batch_size=64, hidden_dim=16, precision="fp32",
            threads=1)
garbage = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 7.0])


def cohort(mods: int, n: int = 360, seed: int = 0, task: str = "multiclass"):
    dims = {f"m{j}": [12, 6] if j % 2 == 0 else [10] for j in range(mods)}
    return synthetic_data(n=n, dims=dims, n_labels=3, task=task, missing_modality=0.15, seed=seed)


@pytest.fixture(scope="module")
def two():
    data = cohort(2)
    tr, va = data.split_part("train"), data.split_part("val")
    done = stages.run_all_stages(tr, va, [0, 1], FAST)
    return data, done


def small_net(mods=3, dim=8, n_out=3, **kw) -> CPIMoENet:
    torch.manual_seed(0)
    dims = {f"m{j}": [5, 3] for j in range(mods)}
    return CPIMoENet(list(dims), dims, dim, n_out, 0.0, **kw)


def test_registered():
    assert is_known_method("cpimoe") and is_known_method("cpimoe_router")


def test_last_stage_keeps_frozen_experts_bit_identical(two):
    data, done = two
    tr, va = data.split_part("train"), data.split_part("val")
    method = create_method("cpimoe", FAST)
    method.pretrained = done
    method.fit(tr, va, [0, 1], Protocol("p", "missing_one", {"modalities": ["m0"], "p": 0.4}))
    for seed, net in zip([0, 1], method.models, strict=True):
        for m in net.modalities:
            state = stages.stage_state(done[f"specific_{m}"], seed)
            for key, value in net.adapters[m].state_dict().items():
                assert torch.equal(value, state[f"adapter.{key}"])
            for key, value in net.specific[m].state_dict().items():
                assert torch.equal(value, state[f"expert.{key}"])
        for name in ("redundant", "synergistic"):
            state = stages.stage_state(done[name], seed)
            for key, value in getattr(net, name).state_dict().items():
                assert torch.equal(value, state[f"expert.{key}"])
        frozen = [p for module in net.frozen_modules() for p in module.parameters()]
        assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
        # ... while the trainable parts did move away from their initialisation.
        init = method.build(method.settings)
        torch.manual_seed(0)
        assert not torch.equal(net.gate[0].weight, init.gate[0].weight)


def test_trainable_parameter_count_matches_hand_count():
    dim, n_out, mods = 8, 3, 2
    net = small_net(mods=mods, dim=dim, n_out=n_out)
    h = dim // 2
    ffn = dim * h + h + h * dim + dim + 2 * dim  # two linears + LayerNorm
    static = 2**mods * dim
    maps = mods * (mods - 1) * ffn
    gate = (2 * dim) * dim + dim + dim * (mods + 2) + (mods + 2)
    head = ffn + dim * n_out + n_out
    assert sum(p.numel() for p in net.trainable_parameters()) == static + maps + gate + head
    # the classic router: no prompts, features in
    plain = small_net(mods=mods, dim=dim, n_out=n_out, prompts=False)
    gate_plain = (mods * dim) * dim + dim + dim * (mods + 2) + (mods + 2)
    assert sum(p.numel() for p in plain.trainable_parameters()) == gate_plain + head
    # the last-stage trainable set is exactly what the FLOP counter sees as trainable
    x = {m: [torch.randn(4, 5), torch.randn(4, 3)] for m in net.modalities}
    mask = {m: torch.ones(4, 2, dtype=torch.bool) for m in net.modalities}
    y = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    last = training_step_cost(net, x, mask, y, "multiclass", full=False)
    full = training_step_cost(net, x, mask, y, "multiclass", full=True)
    assert last["trainable_params"] == static + maps + gate + head
    assert full["trainable_params"] == sum(p.numel() for p in net.parameters())
    assert 0 < last["flops_per_step"] < full["flops_per_step"]


def test_static_prompt_is_the_samples_presence_pattern():
    net = small_net(mods=3)
    patterns = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.bool)
    expected = [sum(2**j for j in range(3) if not row[j]) for row in patterns.tolist()]
    assert pattern_ids(patterns, 8).tolist() == expected
    assert pattern_ids(torch.ones(1, 3, dtype=torch.bool), 8).item() == 0  # complete: id 0 as in the reference
    prompts = net.static_prompt(patterns)
    for row, k in zip(prompts, expected, strict=True):
        assert torch.equal(row, net.static.weight[k])
    assert len({tuple(r.tolist()) for r in prompts}) == 8  # one distinct prompt per pattern
    # the reference's fixed prompts: pattern k -> constant k
    fixed = small_net(mods=2, static_prompt="fixed")
    two = torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    assert fixed.static_prompt(two)[:, 0].tolist() == [0.0, 1.0, 2.0]
    # capped: 2^5 patterns hashed into 8 slots
    capped = small_net(mods=5, max_patterns=8)
    assert capped.static.num_embeddings == 8
    assert int(pattern_ids(torch.zeros(1, 5, dtype=torch.bool), 8)) == 31 % 8


@pytest.mark.parametrize("kw", [{}, {"missing_input": "zero_fill"}, {"prompts": False}, {"static_prompt": "fixed"}])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_masked_inputs_change_no_output(kw, data):
    net = small_net(mods=3, **kw).eval()
    n = 6
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 10_000)))
    x = {m: [torch.randn(n, 5, generator=gen), torch.randn(n, 3, generator=gen)] for m in net.modalities}
    mask = {m: torch.rand(n, 2, generator=gen) > 0.4 for m in net.modalities}
    hostile = {m: [t.clone() for t in xs] for m, xs in x.items()}
    value = data.draw(garbage)
    for m in net.modalities:
        for k, t in enumerate(hostile[m]):
            t[~mask[m][:, k]] = value
    with torch.no_grad():
        a_logits, a_gate = net.forward_all(x, mask)
        b_logits, b_gate = net.forward_all(hostile, mask)
    assert torch.isfinite(a_logits).all() and torch.isfinite(b_logits).all()
    assert torch.equal(a_logits, b_logits) and torch.equal(a_gate, b_gate)
    assert torch.allclose(a_gate.sum(dim=1), torch.ones(n))


@pytest.mark.parametrize("mods", [2, 3, 4])
def test_m_modality_forward(mods):
    net = small_net(mods=mods).eval()
    n = 2**mods
    present = torch.tensor([[(i >> j) & 1 for j in range(mods)] for i in range(n)], dtype=torch.bool)
    x = {m: [torch.randn(n, 5), torch.randn(n, 3)] for m in net.modalities}
    mask = {m: present[:, j : j + 1].expand(n, 2).clone() for j, m in enumerate(net.modalities)}
    with torch.no_grad():
        logits, gate = net.forward_all(x, mask)
    assert logits.shape == (n, 3) and gate.shape == (n, mods + 2)
    assert torch.isfinite(logits).all() and torch.allclose(gate.sum(1), torch.ones(n))
    assert net.expert_names == [f"specific:m{j}" for j in range(mods)] + ["redundant", "synergistic"]
    # every presence pattern gets its own static prompt, and its dynamic prompt uses only present features
    assert len(set(pattern_ids(present, net.n_patterns).tolist())) == n
    feats = torch.randn(n, mods, 8) * present[:, :, None]
    complete = present.all(1)
    dyn = net.dynamic_prompt(feats, present)
    assert torch.allclose(dyn[complete], feats[complete].sum(1))
    assert torch.equal(dyn[~present.any(1)], torch.zeros_like(dyn[~present.any(1)]))


def test_missing_one_protocol_rates_and_seeding():
    n = 2000
    mask = {m: torch.ones(n, 2, dtype=torch.bool) for m in ("a", "b", "c")}
    for p in (0.2, 0.4, 0.6, 0.8):
        prim = Protocol("x", "missing_one", {"modalities": ["a"], "p": p})
        out = prim.apply(mask, torch.Generator().manual_seed(1))
        assert int((~out["a"].any(1)).sum()) == round(p * n)  # exact fraction
        assert out["b"].all() and out["c"].all()
        rnd = Protocol("y", "missing_one", {"modalities": ["a", "b"], "p": p})
        out = rnd.apply(mask, torch.Generator().manual_seed(1))
        lost_a, lost_b = (~out["a"].any(1)), (~out["b"].any(1))
        assert not (lost_a & lost_b).any()  # one modality per sample
        assert int((lost_a | lost_b).sum()) == round(p * n)
        assert abs(lost_a.float().mean() - p / 2) < 0.04 and abs(lost_b.float().mean() - p / 2) < 0.04
        again = rnd.apply(mask, torch.Generator().manual_seed(1))
        other = rnd.apply(mask, torch.Generator().manual_seed(2))
        assert torch.equal(again["a"], out["a"]) and not torch.equal(other["a"], out["a"])
    with pytest.raises(KeyError, match="unknown modalities"):
        Protocol("z", "missing_one", {"modalities": ["nope"], "p": 0.2}).apply(mask, torch.Generator())


@pytest.mark.parametrize("mods", [2, pytest.param(3, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)])
def test_learns_with_m_modalities(mods):
    data = cohort(mods, seed=mods)
    tr, va, te = data.split_part("train"), data.split_part("val"), data.split_part("test")
    method = create_method("cpimoe", FAST)
    method.fit(tr, va, [0], Protocol("p", "missing_one", {"modalities": ["m0", "m1"], "p": 0.4}))
    pred = method.predict(te)
    assert pred.prob.shape == (1, te.n, 3)
    assert pred.extras["gate"].shape == (1, te.n, mods + 2)
    assert pred.extra_columns["gate"] == [f"specific:m{j}" for j in range(mods)] + ["redundant", "synergistic"]
    acc = (pred.prob[0].argmax(1) == te.y.numpy().argmax(1)).mean()
    majority = te.y.numpy().mean(0).max()
    assert acc > majority + 0.15, (acc, majority)


def test_two_modalities_learns_under_each_setting_and_classic_router(two):
    data, done = two
    tr, va, te = data.split_part("train"), data.split_part("val"), data.split_part("test")
    majority = te.y.numpy().mean(0).max()
    for name, mods in (("cpimoe", ["m0"]), ("cpimoe", ["m1"]), ("cpimoe_router", ["m0", "m1"])):
        method = create_method(name, FAST)
        method.pretrained = done
        method.fit(tr, va, [0], Protocol("p", "missing_one", {"modalities": mods, "p": 0.6}))
        acc = (method.predict(te).prob[0].argmax(1) == te.y.numpy().argmax(1)).mean()
        assert acc > majority + 0.15, (name, mods, acc, majority)


def test_stage_outputs_on_disk_and_model_round_trip(two, tmp_path):
    data, done = two
    tr, va, te = data.split_part("train"), data.split_part("val"), data.split_part("test")
    folders = {}
    for name, out in done.items():
        settings_ = {k: v for k, v in out.items() if k not in ("states", "seeds")}
        stages.save_stage(tmp_path / name, settings_, out["seeds"], [out["states"][s] for s in out["seeds"]])
        folders[name] = str(tmp_path / name)
    a = create_method("cpimoe", FAST)
    a.pretrained = done
    a.fit(tr, va, [0, 1], Protocol("none"))
    b = create_method("cpimoe", FAST)
    b.load_stages(folders)
    b.fit(tr, va, [0, 1], Protocol("none"))
    pa, pb = a.predict(te), b.predict(te)
    assert np.array_equal(pa.prob, pb.prob) and np.array_equal(pa.extras["gate"], pb.extras["gate"])
    b.save(tmp_path / "model")
    c = load_method(tmp_path / "model")
    pc = c.predict(te)
    assert np.allclose(pc.prob, pb.prob, atol=1e-6) and np.allclose(pc.extras["gate"], pb.extras["gate"], atol=1e-6)
    # a stage trained with other stage params is refused, naming the stage
    other = create_method("cpimoe", {**FAST, "push_margin": 5.0})
    other.load_stages(folders)
    with pytest.raises(ValueError, match="rerun the stage"):
        other.fit(tr, va, [0], Protocol("none"))
    # a seed the stage was not trained for
    missing = create_method("cpimoe", FAST)
    missing.load_stages(folders)
    with pytest.raises(KeyError, match="has no seed 7"):
        missing.fit(tr, va, [7], Protocol("none"))


def test_stage_params_leave_out_last_stage_settings():
    base = stages.stage_params(FAST)
    assert stages.stage_params({**FAST, "prompts": False, "static_prompt": "fixed", "max_patterns": 4}) == base
    assert stages.stage_params({**FAST, "hidden_dim": 32}) != base
    assert list(stages.stage_plan(["a", "b"])) == ["specific_a", "specific_b", "redundant", "synergistic"]


def test_cell_metrics_multiclass_and_multilabel():
    from sklearn.metrics import cohen_kappa_score, f1_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    prob = rng.random((200, 3))
    prob[np.arange(200), truth] += 0.6
    y = np.eye(3)[truth]
    m = cell_metrics(prob, y, "multiclass", ["a", "b", "c"], None)
    pred = prob.argmax(1)
    assert m["f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(truth, pred))
    assert m["acc"] == pytest.approx((pred == truth).mean())
    assert m["f1:b"] == pytest.approx(f1_score(truth == 1, pred == 1))
    ml = cell_metrics(prob, y, "multilabel", ["a", "b", "c"], np.full(3, 0.7))
    per = [cohen_kappa_score(y[:, c], prob[:, c] >= 0.7) for c in range(3)]
    assert ml["kappa"] == pytest.approx(np.mean(per))
    assert ml["f1:a"] == pytest.approx(f1_score(y[:, 0], prob[:, 0] >= 0.7))
