"""The paper's simple fusion rules and reference heads (issue 13): registry discovery, learning,
mask semantics, checkpoints, the table step, one learning rate for every neural method."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from medmix.evaluation.tables import collect, main_table_markdown
from medmix.methods import create_method, get_method_class, is_known_method, known_methods, load_method
from medmix.methods.attention import AttentionFusionNet
from medmix.methods.concat import ConcatFusionNet
from medmix.methods.large_ref import prior_logits
from medmix.methods.max_fusion import MaxFusionNet
from medmix.methods.meanavg import MeanFusionNet
from medmix.methods.simple_fusion import masked_softmax
from medmix.pipeline.fit import predict_protocols
from medmix.protocols import Protocol
from medmix.training.synthetic import synthetic_data

FAST = dict(lr=3e-3, warmup_epochs=2, max_epochs=30, patience=6, batch_size=64, hidden_dim=32, precision="fp32",
            threads=1)
RULES = ["meanavg", "concat", "max", "attention"]
LEARNERS = [*RULES, "large_ref_a"]
ALL = [*LEARNERS, "mask_only"]
NETS = [MeanFusionNet, ConcatFusionNet, MaxFusionNet, AttentionFusionNet]
garbage = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 7.0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted():
    """The planted task of test_medmix_training, plus label-dependent missingness of modality ``b``."""
    data = synthetic_data(
        n=500, dims={"a": [24, 24], "b": [16]}, informative={"a": [0], "b": [0]}, n_labels=2,
        noise=2.0, teacher_dims={"a": 40, "b": 20}, seed=7,
    )
    rng = np.random.default_rng(3)
    # ``b`` is mostly ordered for positives of label 0 (informative missingness, as in clinical data)
    y0 = data.y[:, 0].numpy() > 0.5
    keep = np.where(y0, rng.random(data.n) < 0.9, rng.random(data.n) < 0.2)
    data.mask["b"] = data.mask["b"] & torch.from_numpy(keep)[:, None]
    data.x["b"] = [t * data.mask["b"][:, k : k + 1] for k, t in enumerate(data.x["b"])]
    data.teacher_mask["b"] = data.mask["b"].any(1)
    data.teacher["b"] = data.teacher["b"] * data.teacher_mask["b"][:, None]
    return tuple(data.split_part(s) for s in ("train", "val", "test"))


@pytest.fixture(scope="module")
def fitted(planted):
    train, val, _ = planted
    out = {}
    for name in ALL:
        method = create_method(name, FAST)
        method.fit(train, val, [0, 1], Protocol("none"))
        out[name] = method
    return out


def _auroc(y, p, cols=None):
    cols = range(y.shape[1]) if cols is None else cols
    return float(np.mean([roc_auc_score(y[:, c], p[:, c]) for c in cols]))


def _logloss(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# --- registry -------------------------------------------------------------------------------------


def test_registry_discovers_every_method_module():
    names = known_methods()
    for name in [*RULES, "mask_only", "linear_probe", "medmix", "medmix_nodistill", "medmix_stacked",
                 "large_ref_<variant>"]:
        assert name in names
    import pkgutil

    import medmix.methods as pkg

    modules = {i.name for i in pkgutil.iter_modules(pkg.__path__)}
    registered = {get_method_class(n).__module__.rsplit(".", 1)[1] for n in names if "<" not in n}
    registered.add(get_method_class("large_ref_x").__module__.rsplit(".", 1)[1])
    # every module but the shared ones (base, simple_fusion, MedMIX's probe read-out helpers) registers a method
    assert modules - registered == {"base", "registry", "simple_fusion", "probe_readout"}


def test_importing_the_registry_imports_no_method_module():
    code = ("import sys, medmix.methods as m; "
            "assert not [k for k in sys.modules if k.startswith('medmix.methods.') and k not in "
            "('medmix.methods.base', 'medmix.methods.registry')], "
            "sorted(sys.modules); m.get_method_class('concat'); assert 'medmix.methods.attention' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_method_family_variants():
    cls = get_method_class("large_ref_note")
    assert cls.name == "large_ref_note" and cls.variant == "note" and cls.__module__ == "medmix.methods.large_ref"
    assert get_method_class("large_ref_note") is cls  # one class per name
    assert is_known_method("large_ref_ct") and not is_known_method("large_ref") and not is_known_method("nope")
    with pytest.raises(KeyError, match="known methods"):
        create_method("nope", {})


def test_config_accepts_families_and_merges_their_params():
    from medmix.plan.config import training_params

    cfg = {"training": {"lr": 1e-3, "dropout": 0.1}, "method_params": {"large_ref": {"dropout": 0.3},
                                                                     "large_ref_note": {"lr": 2e-3}}}
    assert training_params(cfg, "large_ref_note") == {"lr": 2e-3, "dropout": 0.3}
    assert training_params(cfg, "concat") == {"lr": 1e-3, "dropout": 0.1}


# --- one learning rate for every neural method ---------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_lr_comes_from_training_and_baseline_lr_is_refused(name):
    assert create_method(name, {"lr": 0.02}).train_config.lr == 0.02
    assert create_method(name, {}).train_config.lr == 1e-5  # the schema's (paper's) default, as MedMIX
    with pytest.raises(ValueError, match="baseline_lr"):
        create_method(name, {"baseline_lr": 1e-3})


def test_the_trainer_runs_at_that_lr(fitted):
    for name in ALL:
        curves = fitted[name].curves()
        assert curves["lr"].max() == pytest.approx(FAST["lr"])


# --- learning -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNERS)
def test_learns_and_beats_the_majority_class(planted, fitted, name):
    train, _, test = planted
    prob = fitted[name].predict(test).prob
    assert prob.shape == (2, test.n, 2) and np.isfinite(prob).all()
    y = test.y.numpy()
    prior = np.broadcast_to(train.y.numpy().mean(0), y.shape)
    for s in range(2):
        assert _auroc(y, prob[s]) > 0.8
        assert _logloss(y, prob[s]) < _logloss(y, prior) - 0.05


def test_mask_only_reads_the_pattern_and_nothing_else(planted, fitted):
    train, _, test = planted
    prob = fitted["mask_only"].predict(test).prob
    y = test.y.numpy()
    prior = np.broadcast_to(train.y.numpy().mean(0), y.shape)
    # label 0 decides whether ``b`` is present: the pattern alone explains much of it ...
    assert _auroc(y, prob[0], [0]) > 0.75 and _logloss(y[:, :1], prob[0][:, :1]) < _logloss(y[:, :1], prior[:, :1])
    # ... and two samples with the same pattern get the same prediction whatever their embeddings
    pattern = np.concatenate([test.mask[m].numpy() for m in test.modalities], 1)
    for row in np.unique(pattern, axis=0):
        same = (pattern == row).all(1)
        # (equal up to float32 rounding: rows of one batch may take different SIMD paths)
        assert np.ptp(prob[0][same], axis=0).max() <= 1e-6


# --- masks ----------------------------------------------------------------------------------------


def _filled(data, fill, teachers=True):
    """``data`` with ``fill`` written into every absent expert (and teacher) slot."""
    from dataclasses import replace

    x = {m: [torch.where(data.mask[m][:, k : k + 1], t, torch.tensor(fill)) for k, t in enumerate(xs)]
         for m, xs in data.x.items()}
    # a teacher counts as present only with its modality (large_ref), so fill the rest
    teacher = {m: torch.where((data.teacher_mask[m] & data.mask[m].any(1))[:, None], t, torch.tensor(fill))
               for m, t in data.teacher.items()}
    return replace(data, x=x, teacher=teacher if teachers else data.teacher)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(ALL), fill=garbage, drop=st.sampled_from([None, "a", "b"]), seed=st.integers(0, 999))
def test_values_in_masked_slots_change_no_output(planted, fitted, name, fill, drop, seed):
    _, _, test = planted
    gen = torch.Generator().manual_seed(seed)
    mask = {m: t & (torch.rand(t.shape, generator=gen) < 0.7) for m, t in test.mask.items()}
    if drop:
        mask[drop] = torch.zeros_like(mask[drop])
    view = test.with_mask(mask)
    ref = fitted[name].predict(view).prob
    got = fitted[name].predict(_filled(view, fill)).prob
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(ref, got)


dims_strategy = st.dictionaries(st.sampled_from(["img", "note", "ehr"]),
                                st.lists(st.integers(1, 20), min_size=1, max_size=3),
                                min_size=1, max_size=3)


@settings(max_examples=25, deadline=None)
@given(net=st.sampled_from(NETS), dims=dims_strategy, n=st.integers(1, 10), seed=st.integers(0, 2**16), fill=garbage)
def test_fusion_nets_ignore_absent_experts(net, dims, n, seed, fill):
    torch.manual_seed(seed)
    model = net(dims, 3, 8, 0.0).eval()
    gen = torch.Generator().manual_seed(seed)
    x = {m: [torch.randn(n, d, generator=gen) for d in ds] for m, ds in dims.items()}
    mask = {m: torch.rand(n, len(ds), generator=gen) < 0.5 for m, ds in dims.items()}
    mask[next(iter(dims))][0] = False  # at least one sample misses a whole modality
    dirty = {m: [torch.where(mask[m][:, k : k + 1], t, torch.tensor(fill)) for k, t in enumerate(xs)]
             for m, xs in x.items()}
    with torch.no_grad():
        a, b = model(x, mask), model(dirty, mask)
        nothing = {m: torch.zeros_like(t) for m, t in mask.items()}
        empty = model(dirty, nothing)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    # nothing present: the head's bias, for every rule
    assert torch.allclose(empty, model.head[-1].bias.expand_as(empty))


def test_max_and_attention_pool_only_present_experts():
    z = torch.tensor([[[1.0, -5.0], [9.0, 9.0], [0.0, 2.0]]])  # [N=1, K=3, H=2]
    present = torch.tensor([[True, False, True]])
    net = MaxFusionNet({"m": [1, 1, 1]}, 1, 2, 0.0)
    assert torch.equal(net.pool(list(z.unbind(1)), present), torch.tensor([[1.0, 2.0]]))
    w = masked_softmax(torch.tensor([[0.3, 50.0, -0.1]]), present)
    assert w[0, 1] == 0 and torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.equal(masked_softmax(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 3))


# --- the large-model reference ------------------------------------------------------------------------


def test_large_ref_gives_the_training_prior_without_its_teacher(planted, fitted):
    train, _, test = planted
    method = create_method("large_ref_b", FAST)
    method.fit(train, planted[1], [0], Protocol("none"))
    prob = method.predict(test).prob[0]
    absent = ~test.teacher_mask["b"].numpy()
    assert absent.any() and (~absent).any()
    prevalence = np.nanmean(train.y.numpy(), 0)
    np.testing.assert_allclose(prob[absent], np.broadcast_to(prevalence, prob[absent].shape), rtol=1e-5)
    # a modality dropped at test time drops its teacher too
    dropped = test.with_mask({**test.mask, "b": torch.zeros_like(test.mask["b"])})
    np.testing.assert_allclose(method.predict(dropped).prob[0], np.broadcast_to(prevalence, prob.shape), rtol=1e-5)
    assert torch.allclose(torch.softmax(prior_logits(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), "multiclass"), 0)[:2],
                          torch.tensor([0.5, 0.5]), atol=1e-3)


def test_large_ref_needs_the_modalitys_teacher(planted):
    train, val, _ = planted
    with pytest.raises(ValueError, match="no teacher embedding"):
        create_method("large_ref_c", FAST).fit(train, val, [0], Protocol("none"))
    with pytest.raises(TypeError, match="family"):
        get_method_class("large_ref_a").__mro__[1]({})


# --- checkpoints and the table step -------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_save_load_gives_identical_predictions(planted, fitted, tmp_path, name):
    _, _, test = planted
    fitted[name].save(tmp_path / name)
    loaded = load_method(tmp_path / name)
    assert loaded.name == name and loaded.seeds == [0, 1]
    np.testing.assert_array_equal(loaded.predict(test).prob, fitted[name].predict(test).prob)


def test_the_table_step_reads_every_methods_predictions(planted, fitted, tmp_path):
    _, val, test = planted
    files = []
    for name in ALL:
        keys = {"dataset": "syn", "method": fitted[name].name, "train_protocol": "none", "cohort": "syn"}
        frames = predict_protocols(fitted[name], val, [Protocol("none")], {**keys, "eval_set": "val"})
        frames += predict_protocols(fitted[name], test, [Protocol("none"), Protocol("rd", "random_drop", {"p": 0.5})],
                                    {**keys, "eval_set": "test"})
        path = tmp_path / f"{name}.parquet"
        pd.concat(frames, ignore_index=True).to_parquet(path)
        files.append(str(path))
    metrics = collect(files, {"syn": "multilabel"})
    assert set(metrics.method) == set(ALL)
    assert set(metrics.test_protocol) == {"none", "rd"} and set(metrics.seed) == {0, 1}
    text = main_table_markdown(metrics, [0, 1])
    for name in ALL:
        assert f"| {name} |" in text
    clean = metrics[metrics.test_protocol == "none"].groupby("method")["auroc"].mean()
    assert clean["concat"] > clean["mask_only"]


def test_config_validates_the_new_methods_and_refuses_baseline_lr():
    from pathlib import Path

    import yaml

    from medmix.plan.config import ConfigError, validate_config

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    cfg["methods"] = [*RULES, "mask_only", "large_ref_note"]
    validate_config(cfg)
    cfg["methods"] = ["maxx"]
    with pytest.raises(ConfigError, match="unknown method or variant .maxx."):
        validate_config(cfg)
    cfg["methods"] = ["meanavg"]
    cfg["method_params"] = {"meanavg": {"baseline_lr": 1e-3}}
    with pytest.raises(ConfigError, match="method_params.meanavg.baseline_lr"):
        validate_config(cfg)


@pytest.mark.parametrize("spec", [{"kind": "drop_one", "modality": "a", "p": 0.5}, {"kind": "random_drop", "p": 0.3}])
def test_large_ref_trains_under_any_train_time_protocol(planted, spec):
    train, val, test = planted
    spec = dict(spec)
    method = create_method("large_ref_b", dict(FAST, max_epochs=4))
    method.fit(train, val, [0], Protocol("p", spec.pop("kind"), spec))
    assert np.isfinite(method.predict(test).prob).all()


def test_attention_weights_are_reported_per_expert(planted, fitted):
    _, _, test = planted
    pred = fitted["attention"].predict(test)
    w = pred.extras["attention"]
    names = pred.extra_columns["attention"]
    assert w.shape == (2, test.n, 3) and names == ["a:a_expert0_informative", "a:a_expert1_noise",
                                                   "b:b_expert0_informative"]
    present = np.concatenate([test.mask[m].numpy() for m in test.modalities], 1)
    assert (w[:, ~present] == 0).all()
    np.testing.assert_allclose(w.sum(-1), np.broadcast_to(present.any(1), w.shape[:2]).astype(float), atol=1e-6)
    frame = predict_protocols(fitted["attention"], test, [Protocol("none")],
                              {"dataset": "syn", "method": "attention", "train_protocol": "none", "cohort": "syn",
                               "eval_set": "test"})[0]
    assert "attention:b:b_expert0_informative" in frame.columns


@pytest.mark.parametrize("name", ["concat", "max", "attention", "mask_only"])
def test_a_seed_trains_the_same_alone_or_with_others(planted, name):
    train, val, test = planted
    probs = []
    for seeds in ([2], [9, 2]):
        method = create_method(name, dict(FAST, max_epochs=5))
        method.fit(train, val, seeds, Protocol("rd", "random_drop", {"p": 0.2}))
        probs.append(method.predict(test).prob[seeds.index(2)])
    np.testing.assert_array_equal(probs[0], probs[1])
