"""MedMIX training: distillation terms, learning on a planted task, reproducibility, checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from sklearn.metrics import roc_auc_score

from medmix.methods import create_method, load_method
from medmix.methods.medmix import MEDMIX_DEFAULTS, MedMIXObjective, MedMIXSettings, build_members
from medmix.models import MedMIXConfig
from medmix.protocols import Protocol
from medmix.training.distill import (
    TeacherDistances,
    cosine_distill,
    distill_loss,
    distill_weight,
    pairwise_distances,
    rkd_distance,
)
from medmix.training.synthetic import synthetic_data
from medmix.training.trainer import EnsembleTrainer, TrainConfig, _DeviceData, cpu_supports_bf16

# Tiny models: one intra-op thread is fastest (and immune to a busy machine).
FAST = dict(lr=3e-3, warmup_epochs=2, max_epochs=30, patience=6, batch_size=64, hidden_dim=32, precision="fp32",
            threads=1)


@pytest.fixture(scope="module")
def planted():
    """Modality ``a``: one informative and one noise expert; ``b``: a weak informative one."""
    data = synthetic_data(
        n=500, dims={"a": [24, 24], "b": [16]}, informative={"a": [0], "b": [0]}, n_labels=2,
        noise=2.0, teacher_dims={"a": 40, "b": 20}, seed=7,
    )
    return tuple(data.split_part(s) for s in ("train", "val", "test"))


@pytest.fixture(scope="module")
def trained(planted):
    train, val, _ = planted
    method = create_method("medmix", FAST)
    method.fit(train, val, [0, 1], Protocol("none"))
    return method


# --- distillation terms -----------------------------------------------------------------------


def test_distill_weight_ramps_linearly_then_holds():
    assert distill_weight(0, 0.3, 30) == 0.0
    assert distill_weight(15, 0.3, 30) == pytest.approx(0.15)
    assert distill_weight(30, 0.3, 30) == pytest.approx(0.3)
    assert distill_weight(100, 0.3, 30) == pytest.approx(0.3)
    assert distill_weight(0, 0.3, 0) == pytest.approx(0.3)
    assert distill_weight(50, 0.0, 30) == 0.0


def test_distill_loss_is_zero_without_available_teachers():
    gen = torch.Generator().manual_seed(0)
    z = {"a": torch.randn(8, 6, generator=gen, requires_grad=True)}
    proj = {"a": torch.randn(8, 6, generator=gen)}
    raw = {"a": torch.randn(8, 10, generator=gen)}
    none = {"a": torch.zeros(8, dtype=torch.bool)}
    assert distill_loss(z, proj, raw, none, 0.05).item() == 0.0
    assert distill_loss(z, {}, {}, {}, 0.05).item() == 0.0
    loss = distill_loss(z, proj, raw, {"a": torch.ones(8, dtype=torch.bool)}, 0.05)
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(z["a"].grad).all() and z["a"].grad.abs().sum() > 0


def test_distill_loss_ignores_unavailable_rows():
    gen = torch.Generator().manual_seed(1)
    z = {"a": torch.randn(10, 6, generator=gen)}
    proj = {"a": torch.randn(10, 6, generator=gen)}
    raw = {"a": torch.randn(10, 9, generator=gen)}
    avail = {"a": torch.arange(10) % 3 != 0}
    ref = distill_loss(z, proj, raw, avail, 0.05)
    for t in (z["a"], proj["a"], raw["a"]):
        t[~avail["a"]] = 123.0
    assert torch.equal(ref, distill_loss(z, proj, raw, avail, 0.05))


def test_rkd_is_invariant_to_global_scale_and_zero_for_same_structure():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(12, 5, generator=gen), torch.randn(12, 7, generator=gen)
    ref = rkd_distance(s, t)
    assert ref > 0
    for a, b in [(10.0, 1.0), (1.0, 0.01), (3.5, 250.0)]:
        assert torch.allclose(rkd_distance(a * s, b * t), ref, rtol=1e-5, atol=1e-7)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen))
    assert float(rkd_distance(s, 4.0 * s @ rotation)) < 1e-10
    assert float(rkd_distance(s[:1], t[:1])) == 0.0


def test_cosine_distill_is_zero_when_aligned():
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(6, 4, generator=gen)
    assert float(cosine_distill(s, 2.0 * s)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distill(s, -s)) == pytest.approx(2.0, abs=1e-6)


def test_zero_distill_weight_trains_exactly_like_no_teachers(planted):
    train, val, test = planted
    short = dict(FAST, max_epochs=4)
    a = create_method("medmix", dict(short, distill_max=0.0))
    a.fit(train, val, [5], Protocol("none"))
    no_teacher = dataclasses.replace(train, teacher={}, teacher_mask={})
    b = create_method("medmix", short)
    b.fit(no_teacher, val, [5], Protocol("none"))
    assert np.array_equal(a.predict(test).prob, b.predict(test).prob)
    c = create_method("medmix", short)
    c.fit(train, val, [5], Protocol("none"))
    assert not np.array_equal(a.predict(test).prob, c.predict(test).prob), "teachers had no effect"
    assert (c.curves()["distill_loss"] > 0).any()


def test_teacher_distances_give_each_batch_its_rows_block():
    gen = torch.Generator().manual_seed(3)
    teacher = {"a": torch.randn(50, 12, generator=gen), "b": torch.randn(50, 7, generator=gen)}
    cache = TeacherDistances.build(teacher)
    rows = torch.randperm(50, generator=gen)[:16]
    for m, t in teacher.items():
        assert torch.allclose(cache.block(m, rows), pairwise_distances(t[rows]), atol=1e-5)
    student = torch.randn(16, 5, generator=gen)
    avail = torch.rand(16, generator=gen) > 0.3
    ref = rkd_distance(student, teacher["a"][rows], avail)
    assert torch.allclose(rkd_distance(student, None, avail, cache.block("a", rows)), ref, rtol=1e-5, atol=1e-7)
    # Beyond the memory bound nothing is precomputed (each batch computes its own distances).
    assert TeacherDistances.build(teacher, max_bytes=4 * 50 * 50 * 2 - 1) is None
    assert TeacherDistances.build({}) is None


def test_precomputed_teacher_distances_train_as_per_batch_ones(planted, monkeypatch):
    train, val, test = planted
    short = dict(FAST, max_epochs=6, distill_ramp_epochs=0)
    a = create_method("medmix", short)
    a.fit(train, val, [3], Protocol("none"))
    monkeypatch.setattr(TeacherDistances, "MAX_BYTES", 0)
    calls = []
    original = rkd_distance
    monkeypatch.setattr("medmix.training.distill.rkd_distance",
                        lambda *args: calls.append(args[3]) or original(*args))
    b = create_method("medmix", short)
    b.fit(train, val, [3], Protocol("none"))
    assert calls and all(known is None for known in calls), "the per-batch path was not taken"
    ca, cb = a.curves(), b.curves()
    assert np.allclose(ca["val_loss"], cb["val_loss"], atol=5e-4)
    assert np.allclose(a.predict(test).prob, b.predict(test).prob, atol=1e-3)


def test_one_validation_forward_gives_the_separate_passes_results(planted, monkeypatch):
    train, val, _ = planted
    short = dict(FAST, max_epochs=4)
    a = create_method("medmix", short)
    a.fit(train, val, [1], Protocol("none"))
    monkeypatch.delattr(MedMIXObjective, "validate")
    b = create_method("medmix", short)
    b.fit(train, val, [1], Protocol("none"))
    ca, cb = a.curves().drop(columns="seconds"), b.curves().drop(columns="seconds")
    assert any(c.startswith("router_entropy:") for c in ca.columns)
    pd.testing.assert_frame_equal(ca, cb)


def test_present_rows_only_trains_as_the_whole_batch_computation(planted, monkeypatch):
    """The present-rows path of the expert branches and teacher heads (CPU) against every row
    computed: the same curves and predictions to float tolerance (the sums over rows run in
    another order)."""
    train, val, test = planted
    assert not bool(train.mask["a"].bool().all()), "the planted data must have absent experts"
    short = dict(FAST, max_epochs=6, dropout=0.2)
    a = create_method("medmix", short)
    a.fit(train, val, [2], Protocol("none"))
    monkeypatch.setattr("medmix.models.medmix.present_rows", lambda t, present: None)
    b = create_method("medmix", short)
    b.fit(train, val, [2], Protocol("none"))
    ca, cb = a.curves(), b.curves()
    assert np.allclose(ca["val_loss"], cb["val_loss"], rtol=1e-4, atol=1e-5)
    assert np.allclose(ca["train_loss"], cb["train_loss"], rtol=1e-4, atol=1e-5)
    assert np.allclose(a.predict(test).prob, b.predict(test).prob, atol=1e-4)


# --- learning -----------------------------------------------------------------------------------


def test_medmix_beats_majority(trained, planted):
    _, _, test = planted
    pred = trained.predict(test)
    y = test.y.numpy()
    for s in range(pred.prob.shape[0]):
        auroc = np.mean([roc_auc_score(y[:, c], pred.prob[s, :, c]) for c in range(y.shape[1])])
        assert auroc > 0.8, f"seed {s}: AUROC {auroc:.3f} (majority-class predictor: 0.5)"
    assert pred.extras["fusion"].shape == (2, test.n, 2)


def test_router_routes_to_the_informative_expert(planted):
    # The router's own learning: without the stacked probe, which reads every expert linearly and
    # leaves the routed path only the probe's residual errors to learn.
    train, val, test = planted
    method = create_method("medmix", {**FAST, "probe_readout": False})
    method.fit(train, val, [0, 1], Protocol("none"))
    pred = method.predict(test)
    y = test.y.numpy()
    for s in range(pred.prob.shape[0]):
        auroc = np.mean([roc_auc_score(y[:, c], pred.prob[s, :, c]) for c in range(y.shape[1])])
        assert auroc > 0.8, f"seed {s}: AUROC {auroc:.3f}"
    both = test.mask["a"].all(dim=1).numpy()
    gates = pred.extras["router:a"][:, both]  # [S, n, 2]
    assert pred.extra_columns["router:a"] == ["a_expert0_informative", "a_expert1_noise"]
    assert np.all(gates[..., 0].mean(axis=1) > 0.6), gates.mean(axis=1)


def test_curves_and_best_validation_checkpoint(trained, planted):
    _, val, _ = planted
    curves = trained.curves()
    assert {"seed", "epoch", "train_loss", "val_loss", "task_loss", "distill_loss", "lr"} <= set(curves.columns)
    assert curves["train_loss"].iloc[-1] < curves["train_loss"].iloc[0]
    method = create_method("medmix", FAST)
    trainer = EnsembleTrainer(method.train_config, MedMIXObjective(val.task, method.settings))
    for seed, model in zip(trained.seeds, trained.models, strict=True):
        best = curves.loc[curves.seed == seed, "val_loss"].min()
        assert trainer.validation_loss(model, _DeviceData(val, trainer.device, model.modalities, trainer.dtype)) == best


def test_curves_record_router_and_fusion_statistics(trained, planted):
    _, val, _ = planted
    curves = trained.curves()
    gates = ["gate:a:a_expert0_informative", "gate:a:a_expert1_noise"]
    assert {"router_entropy:a", "fusion_entropy", "fusion:a", "fusion:b", *gates} <= set(curves.columns)
    np.testing.assert_allclose(curves[gates].sum(axis=1), 1.0, atol=1e-5)
    assert curves["router_entropy:a"].between(0, 1).all() and curves["fusion_entropy"].between(0, 1).all()
    # The last row of each seed's curves was measured on the weights of that epoch; the restored
    # best checkpoint's statistics equal those of the best epoch.
    for seed, model in zip(trained.seeds, trained.models, strict=True):
        rows = curves[curves.seed == seed]
        best = rows.loc[rows["val_loss"].idxmin()]
        with torch.no_grad():
            out = model(val.x, val.mask)
        both = val.mask["a"].all(1)
        gates_best = out.router["a"][val.mask["a"].any(1)].mean(0).numpy()
        np.testing.assert_allclose(gates_best, best[gates].to_numpy(float), atol=1e-5)
        assert both.any()


# --- reproducibility --------------------------------------------------------------------------


@pytest.mark.parametrize("precision", [
    "fp32",
    pytest.param("bf16", marks=pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 "
                                                  "matmuls (the trainer refuses bf16 there; tested where present)")),
])
def test_same_seed_same_predictions_alone_or_stacked(planted, precision):
    train, val, test = planted
    params = dict(FAST, patience=2, dropout=0.2, precision=precision)
    protocol = Protocol("rd", "random_drop", {"p": 0.3})
    runs = []
    for seeds in ([11], [11], [3, 11, 4]):
        method = create_method("medmix", params)
        method.fit(train, val, seeds, protocol)
        runs.append(method.predict(test).prob[seeds.index(11)])
    assert np.array_equal(runs[0], runs[1])
    assert np.array_equal(runs[0], runs[2])
    # the stack really mixed seeds that stopped at different epochs
    assert method.curves().groupby("seed").epoch.max().nunique() > 1


def test_different_seeds_differ(trained, planted):
    prob = trained.predict(planted[2]).prob
    assert not np.array_equal(prob[0], prob[1])


# --- checkpoints / config -----------------------------------------------------------------------


def test_saved_checkpoints_are_deployable_without_teachers(trained, planted, tmp_path):
    _, _, test = planted
    files = trained.save(tmp_path)
    assert [f.name for f in files] == ["method.json", "seed0.safetensors", "seed1.safetensors"]
    for f in files[1:]:
        with safe_open(str(f), framework="pt") as fh:
            keys = list(fh.keys())
        assert keys and not any(k.startswith("heads.") or "teacher" in k for k in keys)
    reloaded = load_method(tmp_path)
    assert type(reloaded) is type(trained) and reloaded.seeds == [0, 1]
    assert np.array_equal(reloaded.predict(test).prob, trained.predict(test).prob)
    assert sum(p.numel() for p in reloaded.models[0].parameters()) == sum(
        p.numel() for p in trained.models[0].parameters()
    )


def test_router_learning_rate_and_linear_warmup():
    config = TrainConfig.from_params({"lr": 1e-3, "warmup_epochs": 2})
    trainer = EnsembleTrainer(config, objective=None)
    assert [trainer.lr_factor(step, 5) for step in (0, 4, 9, 10, 500)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    model_cfg = MedMIXConfig(dims={"a": [8, 6], "b": [5]}, n_out=2, task="binary", hidden_dim=8)
    router_lr_mult = MedMIXSettings.from_params({}).router_lr_mult
    members = build_members(model_cfg, {"a": 12}, [0, 1], router_lr_mult)
    optimizer = trainer._optimizer(members)
    lrs = {g["lr_mult"]: (g["lr"], len(g["params"])) for g in optimizer.param_groups}
    routers = 2 * len(members[0].model.router_parameters())
    assert lrs[0.3] == (pytest.approx(3e-4), routers)
    total = sum(len(list(m.model.parameters())) + len(list(m.aux.parameters())) for m in members)
    assert lrs[1.0] == (1e-3, total - routers)
    assert members[0].aux is not None and not any("heads" in k for k in members[0].model.state_dict())
    # seeded initialisation: same seed, same weights; the global RNG is left alone
    state = torch.random.get_rng_state()
    again = build_members(model_cfg, {"a": 12}, [1], router_lr_mult)[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(members[1].model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_meanavg_runs_on_the_same_trainer(planted):
    train, val, test = planted
    params = dict(FAST, max_epochs=10)
    probs = []
    for seeds in ([2], [9, 2]):
        method = create_method("meanavg", params)
        method.fit(train, val, seeds, Protocol("rd", "random_drop", {"p": 0.2}))
        probs.append(method.predict(test).prob[seeds.index(2)])
    assert np.array_equal(probs[0], probs[1])
    y = test.y.numpy()
    assert np.mean([roc_auc_score(y[:, c], probs[0][:, c]) for c in range(2)]) > 0.75


def test_train_config_defaults_are_the_papers():
    c = TrainConfig.from_params({"hidden_dim": 64, "betas": [0.8, 0.9], "unrelated": 1, "distill_max": 0.1})
    assert (c.lr, c.weight_decay, c.grad_clip) == (1e-5, 1e-2, 1.0)
    assert (c.warmup_epochs, c.max_epochs, c.batch_size, c.patience) == (50, 200, 256, 20)
    assert c.betas == (0.8, 0.9)
    # MedMIX's own settings are not the generic trainer's
    assert not {f.name for f in dataclasses.fields(TrainConfig)} & set(MEDMIX_DEFAULTS)
    m = MedMIXSettings.from_params({"unrelated": 1})
    assert (m.router_lr_mult, m.distill_max, m.distill_ramp_epochs, m.rkd_weight) == (0.3, 0.3, 30, 0.05)
    assert m.modality_loss_weight == 0.0  # the paper's objective (MedMIX's λ_M option; 1 adds the head losses)
    assert m.fusion_warmup_epochs == 0  # the paper: fusion weights learned from the start (medmix_stacked: 10)
    with pytest.raises(ValueError):
        TrainConfig.from_params({"precision": "fp16"})


@pytest.mark.parametrize("criterion", ["val_auprc", "val_auroc"])
def test_metric_early_stopping_restores_the_best_metric_epoch(planted, criterion):
    from medmix.metrics.classification import compute_metrics

    train, val, _ = planted
    params = dict(FAST, max_epochs=12, early_stopping=criterion)
    for name in ("medmix", "meanavg"):
        method = create_method(name, params)
        method.fit(train, val, [0], Protocol("none"))
        curves = method.curves()
        assert criterion in curves.columns
        best = curves[criterion].max()
        # The restored checkpoint is the first epoch with the best validation metric.
        first = curves.loc[curves[criterion] == best, "epoch"].min()
        assert curves.loc[curves.improved, "epoch"].max() == first
        got = compute_metrics(method.predict(val).prob[0], val.y.numpy(), val.task)[criterion.removeprefix("val_")]
        assert got == pytest.approx(best, abs=1e-6)


def test_fusion_warmup_schedule_and_paper_form():
    from medmix.methods.medmix import PAPER_FORM, fusion_mix, model_config

    assert [fusion_mix(e, 4) for e in (0, 3, 4, 6, 8, 50)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    assert all(fusion_mix(e, 0) == 1.0 for e in range(5))
    paper = create_method("medmix", {"lr": 1e-3})  # `medmix` is the paper's model
    assert paper.settings.fusion_warmup_epochs == 0 and paper.settings.modality_loss_weight == 0.0
    assert not paper.probe_settings.enabled and not type(paper).beyond_paper
    config = model_config(synthetic_data(n=40), paper.params)
    assert not config.linear_readout and not config.probe_readout
    assert PAPER_FORM == {"linear_readout": False, "fusion_warmup_epochs": 0, "modality_loss_weight": 0.0,
                          "probe_readout": False}
    stacked = create_method("medmix_stacked", {"lr": 1e-3})  # beyond the paper, under its own name
    assert type(stacked).beyond_paper and stacked.probe_settings.enabled and stacked.probe_settings.crossfit == 5
    assert stacked.settings.fusion_warmup_epochs == 10
    tuned = create_method("medmix_stacked", {"lr": 1e-3, "probe_crossfit": 3})  # its own keys still tune it
    assert tuned.probe_settings.crossfit == 3


def test_warmup_checkpoint_predicts_as_validated(planted):
    """A best epoch inside the fusion warm-up is restored with its fusion mix (the buffer)."""
    train, val, _ = planted
    method = create_method("medmix", {**FAST, "max_epochs": 3, "fusion_warmup_epochs": 50})
    method.fit(train, val, [0], Protocol("none"))
    assert float(method.models[0].fusion_mix) == 0.0
    fusion = method.predict(val).extras["fusion"][0]
    present = val.modality_mask().numpy()
    expected = present / np.maximum(present.sum(1, keepdims=True), 1)
    assert np.allclose(fusion, expected, atol=1e-6)


def test_early_stopping_criterion_is_validated():
    assert TrainConfig().early_stopping == "val_loss"  # the paper's criterion is the default
    with pytest.raises(ValueError, match="early_stopping"):
        TrainConfig.from_params({"early_stopping": "val_f1"})
