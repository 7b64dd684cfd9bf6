"""AdaCoMed's training schedules (issue 27 item 5): the reference's two stages (small branch
pre-trained, then frozen except its classifier) by default, the joint fit as ``schedule: joint``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmix.methods import create_method, load_method
from medmix.methods.adacomed import AdaCoMed, _CommitteeOnly
from medmix.methods.simple_fusion import SimpleFusion
from medmix.protocols import Protocol
from medmix.training.synthetic import synthetic_data
from medmix.training.trainer import seeded_init

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(lr=3e-3, warmup_epochs=1, max_epochs=6, patience=3, batch_size=64, hidden_dim=16, precision="fp32",
            threads=1)
DROP = Protocol("rd", "random_drop", {"p": 0.2})


@pytest.fixture(scope="module")
def splits():
    data = synthetic_data(n=240, dims={"a": [12, 8], "b": [10]}, informative={"a": [0], "b": [0]}, n_labels=2,
                          noise=1.0, teacher_dims={"a": 16, "b": 8}, seed=3)
    return tuple(data.split_part(s) for s in ("train", "val", "test"))


@pytest.fixture(scope="module")
def two_stage(splits):
    train, val, _ = splits
    method = create_method("adacomed", FAST)
    method.fit(train, val, [0], DROP)
    return method


def _state(params):
    return [p.detach().clone() for p in params]


def test_stage2_freezes_the_small_branch_but_not_its_classifier(splits, two_stage):
    train, val, _ = splits
    stage1 = create_method("adacomed", FAST)
    stage1.fit_small_branch(train, val, [0], DROP)
    net1, net2 = stage1.models[0], two_stage.models[0]
    # the small branch (small_proj, small_out) is where stage 1 left it
    for a, b in zip(net1.small_branch_parameters(), net2.small_branch_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... stage 1 did train it (it is not the initialisation)
    fresh = seeded_init(0, lambda: AdaCoMed(FAST).build(stage1.settings))
    assert any(not torch.equal(a, b)
               for a, b in zip(fresh.small_branch_parameters(), net1.small_branch_parameters(), strict=True))
    # ... while stage 2 trained the classifier and the large branch
    assert any(not torch.equal(a, b)
               for a, b in zip(net1.classifier_parameters(), net2.classifier_parameters(), strict=True))
    assert not torch.equal(net1.large_out.weight, net2.large_out.weight)
    assert not torch.equal(net1.gate.weight, net2.gate.weight)
    # stage 1 never touched the large branch; the frozen flags are undone after the fit
    assert torch.equal(net1.large_out.weight, fresh.large_out.weight)
    assert all(p.requires_grad for p in net2.parameters())


def test_small_branch_and_classifier_partition_the_small_model(two_stage):
    net = two_stage.models[0]
    small = {id(p) for p in net.small_branch_parameters()}
    head = {id(p) for p in net.classifier_parameters()}
    names = {n for n, p in net.named_parameters() if id(p) in small}
    assert names and all(n.startswith(("small_proj.", "small_out.")) for n in names)
    assert {n for n, p in net.named_parameters() if id(p) in head} == {"head.weight", "head.bias"}
    assert not small & head


def test_curves_and_selection_have_both_stages(two_stage):
    curves = two_stage.curves()
    assert set(curves["stage"]) == {1, 2}
    s1, s2 = curves[curves["stage"] == 1], curves[curves["stage"] == 2]
    assert s1["epoch"].max() < FAST["max_epochs"] <= s2["epoch"].min()
    assert np.isfinite(curves["val_loss"]).all() and "contrastive_loss" in s2 and s1["contrastive_loss"].isna().all()
    (entry,) = two_stage.selection
    assert entry["seed"] == 0 and "stage1" in entry and "lr" in entry["stage1"]


def test_checkpoint_round_trip(tmp_path, splits, two_stage):
    _, _, test = splits
    before = two_stage.predict(test)
    two_stage.save(tmp_path / "m")
    after = load_method(tmp_path / "m").predict(test)
    np.testing.assert_array_equal(before.prob, after.prob)
    np.testing.assert_array_equal(before.extras["adacomed"], after.extras["adacomed"])


def test_joint_schedule_is_the_previous_single_fit(splits):
    train, val, test = splits
    joint = create_method("adacomed", dict(FAST, schedule="joint"))
    joint.fit(train, val, [0], DROP)
    prob = joint.predict(test).prob
    assert np.isfinite(prob).all() and "stage" not in joint.curves()
    # the earlier path: SimpleFusion.fit on the committee-only protocol view, every parameter at once
    old = create_method("adacomed", dict(FAST, schedule="joint"))
    SimpleFusion.fit(old, train, val, [0], _CommitteeOnly(DROP, train.modalities))
    np.testing.assert_array_equal(prob, old.predict(test).prob)
    two = create_method("adacomed", FAST)
    two.fit(train, val, [0], DROP)
    assert not np.array_equal(prob, two.predict(test).prob)


@pytest.mark.parametrize("bad", ["stagewise", "", None])
def test_bad_schedule_is_rejected(bad):
    with pytest.raises(ValueError, match="schedule"):
        create_method("adacomed", dict(FAST, schedule=bad))


def test_schedule_is_a_known_param():
    assert "schedule" in AdaCoMed.extra_params
    assert create_method("adacomed", FAST).schedule == "two_stage"


def test_a_seed_trains_the_same_alone_or_with_others(splits):
    train, val, test = splits
    probs = []
    for seeds in ([1], [0, 1]):
        method = create_method("adacomed", FAST)
        method.fit(train, val, seeds, DROP)
        probs.append(method.predict(test).prob[seeds.index(1)])
    np.testing.assert_array_equal(probs[0], probs[1])
