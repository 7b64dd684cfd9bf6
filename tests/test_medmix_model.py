"""MedMIX network: mask semantics (property-based), adapter rank, all-missing output, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medmix.models import MedMIXConfig, MedMIXNet, adapter_rank
from medmix.models.losses import to_probabilities
from medmix.models.medmix import ExpertBranch, TeacherHeads, present_rows

SETTINGS = settings(max_examples=25, deadline=None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(dims, n_out=3, task="multilabel", seed=0, dropout=0.0, linear_readout=False) -> MedMIXNet:
    torch.manual_seed(seed)
    model = MedMIXNet(MedMIXConfig(dims=dims, n_out=n_out, task=task, hidden_dim=16, dropout=dropout,
                                   linear_readout=linear_readout))
    # Non-zero adapters (and read-outs) so that every path of the network carries signal.
    for block in model.blocks.values():
        for branch in block.experts:
            torch.nn.init.normal_(branch.adapter_up.weight, std=0.1)
        for readout in block.readouts or []:
            torch.nn.init.normal_(readout.weight, std=0.1)
    return model.eval()


def make_inputs(dims, n, gen, p_present=0.6):
    x = {m: [torch.randn(n, d, generator=gen) for d in ds] for m, ds in dims.items()}
    mask = {m: torch.rand(n, len(ds), generator=gen) < p_present for m, ds in dims.items()}
    return x, mask


def assert_outputs_equal(a, b):
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.fusion, b.fusion)
    for m in a.router:
        assert torch.equal(a.router[m], b.router[m])
        assert torch.equal(a.z[m], b.z[m])


dims_strategy = st.dictionaries(
    st.sampled_from(["img", "note", "ehr", "ct"]),
    st.lists(st.integers(1, 40), min_size=1, max_size=3),
    min_size=1,
    max_size=3,
)
garbage = st.sampled_from([0.0, 1e6, -1e6, math.nan, math.inf, -math.inf, 3.0])


@SETTINGS
@given(dims=dims_strategy, n=st.integers(1, 12), seed=st.integers(0, 2**16), fill=garbage, readout=st.booleans())
def test_masked_expert_values_never_change_the_output(dims, n, seed, fill, readout):
    gen = torch.Generator().manual_seed(seed)
    model = make_model(dims, seed=seed % 7, linear_readout=readout)
    x, mask = make_inputs(dims, n, gen)
    with torch.no_grad():
        ref = model(x, mask)
        changed = {m: [t.clone() for t in xs] for m, xs in x.items()}
        for m, xs in changed.items():
            for k, t in enumerate(xs):
                absent = ~mask[m][:, k]
                t[absent] = fill if fill != 3.0 else torch.randn(int(absent.sum()), t.shape[1], generator=gen) * 100
        assert_outputs_equal(ref, model(changed, mask))


@SETTINGS
@given(dims=dims_strategy, n=st.integers(1, 12), seed=st.integers(0, 2**16), readout=st.booleans())
def test_masked_modality_values_never_change_the_output(dims, n, seed, readout):
    gen = torch.Generator().manual_seed(seed)
    model = make_model(dims, seed=seed % 5, linear_readout=readout)
    x, mask = make_inputs(dims, n, gen)
    dropped = sorted(dims)[seed % len(dims)]
    mask[dropped][:] = False
    with torch.no_grad():
        ref = model(x, mask)
        x[dropped] = [torch.randn(n, t.shape[1], generator=gen) * 1e3 for t in x[dropped]]
        out = model(x, mask)
    assert_outputs_equal(ref, out)
    assert torch.all(out.fusion[:, model.modalities.index(dropped)] == 0)


@SETTINGS
@given(dims=dims_strategy, n=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_weights_renormalise_over_present_experts_and_modalities(dims, n, seed):
    gen = torch.Generator().manual_seed(seed)
    model = make_model(dims, seed=seed % 3)
    x, mask = make_inputs(dims, n, gen, p_present=0.5)
    with torch.no_grad():
        out = model(x, mask)
    present = torch.stack([mask[m].any(1) for m in model.modalities], 1)
    assert torch.equal(out.present, present)
    assert torch.all(out.fusion[~present] == 0)
    any_present = present.any(1)
    sums = out.fusion.sum(1)
    assert torch.allclose(sums[any_present], torch.ones(int(any_present.sum())), atol=1e-6)
    assert torch.all(sums[~any_present] == 0)
    for m in model.modalities:
        g = out.router[m]
        assert torch.all(g[~mask[m]] == 0)
        rows = mask[m].any(1)
        assert torch.allclose(g[rows].sum(1), torch.ones(int(rows.sum())), atol=1e-6)
        assert torch.all(out.z[m][~rows] == 0)


@SETTINGS
@given(dims=dims_strategy, n=st.integers(1, 16), seed=st.integers(0, 2**16), mix=st.sampled_from([0.0, 0.3, 1.0]))
def test_fusion_mix_blends_learned_and_uniform_weights_over_present_modalities(dims, n, seed, mix):
    gen = torch.Generator().manual_seed(seed)
    model = make_model(dims, seed=seed % 3)
    x, mask = make_inputs(dims, n, gen, p_present=0.5)
    with torch.no_grad():
        learned = model(x, mask).fusion
        model.fusion_mix.fill_(mix)
        out = model(x, mask)
    present = out.present.float()
    uniform = present / present.sum(1, keepdim=True).clamp_min(1)
    assert torch.allclose(out.fusion, mix * learned + (1 - mix) * uniform, atol=1e-6)
    assert torch.all(out.fusion[~out.present] == 0)
    if mix == 0.0:
        expected = (uniform.unsqueeze(-1) * out.modality_logits).sum(1)
        assert torch.allclose(out.logits, expected, atol=1e-5)


def test_linear_readout_adds_each_present_experts_linear_term():
    dims = {"a": [5, 3], "b": [4]}
    model = make_model(dims, seed=1, linear_readout=True)
    fresh = MedMIXNet(MedMIXConfig(dims=dims, n_out=3, task="multilabel", hidden_dim=16, linear_readout=True))
    assert all(torch.all(r.weight == 0) for block in fresh.blocks.values() for r in block.readouts)
    gen = torch.Generator().manual_seed(0)
    x, mask = make_inputs(dims, 9, gen)
    with torch.no_grad():
        out = model(x, mask)
        block = model.blocks["a"]
        head = block.head(out.z["a"])
        expected = head + sum(mask["a"][:, k:k + 1] * block.readouts[k](x["a"][k]) for k in range(2))
    assert torch.allclose(out.modality_logits[:, 0], expected, atol=1e-5)


def test_fusion_mix_and_readouts_are_part_of_the_checkpoint():
    dims = {"a": [5], "b": [4, 2]}
    model = make_model(dims, seed=2, linear_readout=True)
    model.fusion_mix.fill_(0.25)
    clone = MedMIXNet(MedMIXConfig.from_json(model.config.to_json()))
    clone.load_state_dict(model.state_dict())
    assert float(clone.fusion_mix) == 0.25 and clone.config.linear_readout
    x, mask = make_inputs(dims, 7, torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(clone.eval()(x, mask).logits, model(x, mask).logits)


@given(d=st.integers(1, 10**6))
def test_adapter_rank_formula(d):
    r = adapter_rank(d)
    assert r == min(128, max(32, d // 16))
    assert 32 <= r <= 128


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 3000))
def test_adapter_module_uses_the_rank(d):
    branch = ExpertBranch(d, 8, 0.0)
    assert branch.adapter_down.weight.shape == (adapter_rank(d), d)
    assert branch.adapter_up.weight.shape == (d, adapter_rank(d))


@pytest.mark.parametrize("training", [True, False])
def test_expert_branch_computes_only_present_rows_as_the_whole_batch_would(training):
    """On CPU a branch computes only its present rows; outputs, parameter gradients and the dropout
    stream are those of the whole-batch computation (absent rows: zero output, no gradient)."""
    gen = torch.Generator().manual_seed(3)
    branch = ExpertBranch(40, 16, dropout=0.3)
    with torch.no_grad():
        branch.adapter_up.weight.normal_(generator=gen)  # a live adapter path (it starts at zero)
    branch.train(training)
    present = torch.rand(20, generator=gen) < 0.6
    present[0], present[1] = True, False
    e = torch.where(present[:, None], torch.randn(20, 40, generator=gen), 0.0)  # absent rows zeroed, as trained
    weights = torch.randn(20, 16, generator=gen)
    assert present_rows(e, present) is not None  # the compact path is taken below

    def run(compact: bool):
        branch.zero_grad(set_to_none=True)
        branch.drop.generator = torch.Generator().manual_seed(11)
        out = branch(e, present) if compact else branch.drop(branch.embed(e), keep=present[:, None])
        (out * weights).sum().backward()
        grads = {name: p.grad.clone() for name, p in branch.named_parameters()}
        return out.detach(), grads, branch.drop.generator.get_state()

    (out_c, grads_c, state_c), (out_f, grads_f, state_f) = run(True), run(False)
    torch.testing.assert_close(out_c, out_f, rtol=1e-5, atol=1e-6)
    assert (out_c[~present] == 0).all()
    for name in grads_f:
        torch.testing.assert_close(grads_c[name], grads_f[name], rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(state_c, state_f)  # the same random bits were drawn


def test_every_row_is_computed_where_present_rows_do_not_apply():
    e = torch.randn(6, 8)
    some = torch.tensor([True, False] * 3)
    assert present_rows(e, some).tolist() == [0, 2, 4]
    with torch.no_grad():  # predictions (and their FLOP count, Table E6) compute every row
        assert present_rows(e, some) is None
    for present in (torch.ones(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)):
        assert present_rows(e, present) is None  # all present, or none (zero gradients kept)
    seen = []
    torch.func.vmap(lambda t: seen.append(present_rows(t, some)) or t)(e[None])  # inside a member stack
    assert seen == [None]


def test_teacher_heads_project_the_available_rows_as_every_row():
    gen = torch.Generator().manual_seed(5)
    heads = TeacherHeads({"a": 12, "b": 6}, 8)
    teacher = {"a": torch.randn(10, 12, generator=gen), "b": torch.randn(10, 6, generator=gen)}
    available = {"a": torch.rand(10, generator=gen) < 0.5, "b": torch.ones(10, dtype=torch.bool)}
    available["a"][:2] = torch.tensor([True, False])
    weights = torch.randn(10, 8, generator=gen)

    def run(avail):
        heads.zero_grad(set_to_none=True)
        out = heads(teacher, avail)
        sum((o * weights * available[m][:, None]).sum() for m, o in out.items()).backward()
        return out, {name: p.grad.clone() for name, p in heads.named_parameters()}

    (out_c, grads_c), (out_f, grads_f) = run(available), run(None)
    assert (out_c["a"][~available["a"]] == 0).all()
    torch.testing.assert_close(out_c["a"][available["a"]], out_f["a"][available["a"]])
    torch.testing.assert_close(out_c["b"], out_f["b"])
    for name in grads_f:
        torch.testing.assert_close(grads_c[name], grads_f[name], rtol=1e-4, atol=1e-6, msg=name)


def test_adapter_rank_rejects_non_positive():
    with pytest.raises(ValueError):
        adapter_rank(0)


@pytest.mark.parametrize("task", ["multilabel", "binary", "multiclass"])
def test_all_missing_sample_has_defined_finite_output(task):
    dims = {"img": [12, 7], "note": [9]}
    model = make_model(dims, n_out=4, task=task)
    gen = torch.Generator().manual_seed(1)
    x, mask = make_inputs(dims, 6, gen, p_present=1.0)
    for m in mask:
        mask[m][2] = False  # sample 2: every modality missing
        x[m] = [t.index_fill(0, torch.tensor([2]), float("nan")) for t in x[m]]
    with torch.no_grad():
        out = model(x, mask)
    assert torch.isfinite(out.logits).all()
    assert torch.all(out.logits[2] == 0)
    prob = to_probabilities(out.logits, task)
    expected = 0.25 if task == "multiclass" else 0.5
    assert torch.allclose(prob[2], torch.full((4,), expected))
    assert torch.all(out.fusion[2] == 0)
    # other samples are unaffected by the all-missing one
    others = [0, 1, 3, 4, 5]
    with torch.no_grad():
        alone = model({m: [t[others] for t in xs] for m, xs in x.items()}, {m: v[others] for m, v in mask.items()})
    assert torch.allclose(alone.logits, out.logits[others], atol=1e-6)


def test_bf16_autocast_keeps_mask_semantics():
    dims = {"img": [32, 16], "note": [24]}
    model = make_model(dims)
    gen = torch.Generator().manual_seed(3)
    x, mask = make_inputs(dims, 20, gen)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(x, mask)
        x["img"][0][~mask["img"][:, 0]] = 1e4
        out = model(x, mask)
    assert ref.logits.dtype == torch.float32
    assert_outputs_equal(ref, out)


def test_wrong_input_dims_are_reported():
    model = make_model({"img": [12]})
    with pytest.raises(ValueError, match="img"):
        model({"img": [torch.zeros(2, 13)]}, {"img": torch.ones(2, 1, dtype=torch.bool)})
    with pytest.raises(KeyError, match="img"):
        model({}, {})
