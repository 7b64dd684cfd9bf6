"""The gbdt reference method: NaN for absent experts (no imputation), learning, grid chosen on
validation, determinism per seed, save/load, masked slots never read, multiclass, settings checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medmix.data import Standardizer
from medmix.methods import create_method, known_methods, load_method
from medmix.methods.gbdt import gbdt_features
from medmix.plan.config import ConfigError, _check_method_params
from medmix.protocols import Protocol
from medmix.training.synthetic import synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"gbdt_max_rounds": 150, "gbdt_early_stopping": 20}


@pytest.fixture(scope="module")
def data():
    d = synthetic_data(n=400, dims={"a": [12, 8], "b": [10]}, informative={"a": [0], "b": [0]}, n_labels=2,
                       missing_modality=0.3, seed=5)
    d = Standardizer.fit(d.split_part("train")).apply(d)
    y = d.y.clone()
    y[:30, 1] = float("nan")  # unknown labels, skipped for label 1 only
    d.y = y
    return d


@pytest.fixture(scope="module")
def fitted(data):
    method = create_method("gbdt", FAST)
    method.fit(data.split_part("train"), data.split_part("val"), [0, 1], Protocol("none"))
    return method


def test_registered():
    assert "gbdt" in known_methods()


def test_absent_experts_are_nan_not_imputed(data):
    x = gbdt_features(data)
    assert x.shape == (data.n, 12 + 8 + 10)
    for m, cols in (("a", slice(0, 12)), ("b", slice(20, 30))):
        absent = ~data.mask[m][:, 0].numpy()
        assert absent.any()
        assert np.isnan(x[absent, cols]).all()  # NaN, not the zero the fit job's scaling leaves there
        assert np.isfinite(x[~absent, cols]).all()


def test_learns_and_beats_majority(data, fitted):
    test = data.split_part("test")
    prob = fitted.predict(test).prob
    assert prob.shape == (2, test.n, 2) and np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()
    y = test.y.numpy()
    for c in range(2):
        known = ~np.isnan(y[:, c])
        yc, pc = y[known, c], prob[0, known, c]
        assert roc_auc_score(yc, pc) > 0.75  # the majority / prevalence predictor scores 0.5
        prev = np.clip(data.split_part("train").y.numpy()[:, c], 0, 1)
        prev = np.nanmean(prev)
        majority_loss = -np.mean(yc * np.log(prev) + (1 - yc) * np.log(1 - prev))
        model_loss = -np.mean(yc * np.log(np.clip(pc, 1e-7, 1)) + (1 - yc) * np.log(np.clip(1 - pc, 1e-7, 1)))
        assert model_loss < majority_loss


def test_absent_modality_is_read_as_missing(data, fitted):
    """A sample with modality b absent is predicted from a (NaN) missing value: finite, and not the
    same as b present with its value at 0 (what an imputation by the training mean would give)."""
    test = data.split_part("test")
    keep = test.mask["b"][:, 0].clone()
    no_b = test.with_mask({**test.mask, "b": torch.zeros_like(test.mask["b"])})
    zero_b = test.with_mask({**test.mask, "b": torch.ones_like(test.mask["b"])})
    zero_b.x = {**zero_b.x, "b": [torch.zeros_like(t) for t in zero_b.x["b"]]}
    p_missing, p_zero = fitted.predict(no_b).prob, fitted.predict(zero_b).prob
    assert np.isfinite(p_missing).all()
    assert not np.allclose(p_missing, p_zero)
    # Samples that had b present get different predictions once it is removed: b is used.
    assert not np.allclose(p_missing[:, keep.numpy()], fitted.predict(test).prob[:, keep.numpy()])


@pytest.mark.parametrize("hostile", [float("nan"), float("inf"), float("-inf"), 1e30, -1e30])
def test_masked_slots_are_never_read(data, fitted, hostile):
    test = data.split_part("test")
    poisoned = test.subset(np.arange(test.n))
    poisoned.x = {m: [torch.where(poisoned.mask[m][:, k : k + 1], t, torch.tensor(hostile)) for k, t in enumerate(xs)]
                  for m, xs in poisoned.x.items()}
    absent = ~poisoned.mask["a"][:, 0]
    slots = poisoned.x["a"][0][absent]
    assert absent.any() and (torch.isnan(slots).all() if hostile != hostile else (slots == hostile).all())
    np.testing.assert_array_equal(fitted.predict(poisoned).prob, fitted.predict(test).prob)


def test_grid_chosen_on_validation(fitted):
    curves = fitted.curves()
    assert len(curves) == 2 * 2 * 4  # seeds × labels × (2 num_leaves × 2 learning rates)
    for _, part in curves.groupby(["seed", "label"]):
        assert part["chosen"].sum() == 1
        assert part.loc[part["chosen"], "val_loss"].iloc[0] == part["val_loss"].min()
        assert (part["best_iteration"] >= 1).all() and (part["best_iteration"] <= FAST["gbdt_max_rounds"]).all()


def test_deterministic_per_seed(data, fitted):
    again = create_method("gbdt", FAST)
    again.fit(data.split_part("train"), data.split_part("val"), [1], Protocol("none"))
    assert again.models[0] == fitted.models[1]  # the same seed gives the same boosters
    assert fitted.models[0] != fitted.models[1]  # bagging / feature sampling follow the seed


def test_features_binned_once_per_fit(data, monkeypatch):
    from medmix.methods.gbdt import GBDT

    calls = []
    original = GBDT._binned
    monkeypatch.setattr(GBDT, "_binned", lambda self, *a: calls.append(1) or original(self, *a))
    params = {**FAST, "gbdt_num_leaves": [7], "gbdt_learning_rate": [0.1]}
    create_method("gbdt", params).fit(data.split_part("train"), data.split_part("val"), [0, 1], Protocol("none"))
    assert len(calls) == 1  # every label, grid point and seed trains on subsets of one binning
    create_method("gbdt", params).fit(data.split_part("train"), data.split_part("val"), [0, 1],
                                      Protocol("rd", "random_drop", {"p": 0.5}))
    assert len(calls) == 3  # a train-time protocol masks rows per seed: binned per seed


def test_shared_binning_gives_the_per_label_model(data, fitted):
    """Label 0 (no unknown rows), seed 1: the stored booster equals one trained on a fresh Dataset of that label."""
    import lightgbm as lgb

    train, val, test = (data.split_part(s) for s in ("train", "val", "test"))
    xt, xv, xs = (gbdt_features(d, train.dims()) for d in (train, val, test))
    curves = fitted.curves()
    row = curves[(curves.seed == 1) & (curves.label == train.labels[0]) & curves.chosen].iloc[0]
    params = fitted._lgb_params(1, int(row.num_leaves), float(row.learning_rate), "binary", 1,
                                fitted.col_wise(*xt.shape))
    dtrain = lgb.Dataset(xt, np.ascontiguousarray(train.y[:, 0].numpy(), dtype=np.float64))
    fresh = lgb.train(params, dtrain, num_boost_round=int(row.best_iteration))
    stored = lgb.Booster(model_str=fitted.models[1][0])
    np.testing.assert_array_equal(stored.predict(xs), fresh.predict(xs))
    assert not np.isnan(train.y[:, 0].numpy()).any() and val.n > 0


def test_save_load_identical(data, fitted, tmp_path):
    files = fitted.save(tmp_path / "gbdt")
    assert {f.name for f in files} == {"method.json", "seed0.safetensors", "seed1.safetensors"}
    loaded = load_method(tmp_path / "gbdt")
    test = data.split_part("test")
    np.testing.assert_array_equal(loaded.predict(test).prob, fitted.predict(test).prob)


def test_train_protocol_masks_training_rows(data):
    plain = create_method("gbdt", {**FAST, "gbdt_num_leaves": [7], "gbdt_learning_rate": [0.1]})
    drop = create_method("gbdt", {**FAST, "gbdt_num_leaves": [7], "gbdt_learning_rate": [0.1]})
    plain.fit(data.split_part("train"), data.split_part("val"), [0], Protocol("none"))
    drop.fit(data.split_part("train"), data.split_part("val"), [0], Protocol("rd", "random_drop", {"p": 0.5}))
    assert plain.models != drop.models


def test_constant_label_and_multiclass():
    d = synthetic_data(n=300, dims={"a": [8]}, n_labels=3, task="multiclass", seed=1)
    method = create_method("gbdt", {**FAST, "gbdt_num_leaves": [7], "gbdt_learning_rate": [0.1]})
    method.fit(d.split_part("train"), d.split_part("val"), [0], Protocol("none"))
    prob = method.predict(d.split_part("test")).prob
    assert prob.shape == (1, d.split_part("test").n, 3)
    np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-5)
    b = synthetic_data(n=200, dims={"a": [6]}, n_labels=2, seed=2)
    b.y[:, 1] = 1.0  # a single class in training: a constant model at the training prevalence
    one = create_method("gbdt", {**FAST, "gbdt_num_leaves": [7], "gbdt_learning_rate": [0.1]})
    one.fit(b.split_part("train"), b.split_part("val"), [0], Protocol("none"))
    p = one.predict(b.split_part("test")).prob
    assert np.allclose(p[0, :, 1], 1 - 1e-4) and p[0, :, 0].std() > 0


@pytest.mark.parametrize("key, value", [("gbdt_num_leaves", [1]), ("gbdt_num_leaves", []), ("gbdt_learning_rate", [0]),
                                        ("gbdt_max_rounds", 0), ("gbdt_feature_fraction", 1.5),
                                        ("gbdt_num_leaves", [7.5]), ("gbdt_max_bin", 1), ("gbdt_max_bin", True)])
def test_bad_settings_refused_at_config_time(key, value):
    with pytest.raises(ValueError, match=f"method_params.gbdt.{key}"):
        create_method("gbdt", {key: value})
    with pytest.raises(ConfigError, match=f"method_params.gbdt.{key}"):
        _check_method_params("gbdt", {key: value}, {})
