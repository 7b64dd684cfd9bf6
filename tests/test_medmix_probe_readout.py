"""MedMIX's ``probe_readout`` option: model wiring, parameter groups, the probe's L2 and init, paper form."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medmix.methods import create_method
from medmix.methods.linear_probe import LinearProbe, probe_features
from medmix.methods.medmix import PAPER_FORM, MedMIXObjective, MedMIXSettings, build_members, model_config
from medmix.methods.probe_readout import ProbeSettings, fit_reference_probe, known_targets
from medmix.models import MedMIXConfig, MedMIXNet
from medmix.protocols import Protocol
from medmix.training.synthetic import synthetic_data
from medmix.training.trainer import Batch, EnsembleTrainer, Member, TrainConfig

FAST = dict(lr=3e-3, warmup_epochs=2, max_epochs=12, patience=4, batch_size=64, hidden_dim=16, precision="fp32",
            threads=1, distill_max=0.0)


@pytest.fixture(scope="module")
def planted():
    data = synthetic_data(n=300, dims={"a": [12, 8], "b": [6]}, informative={"a": [0], "b": [0]}, n_labels=2,
                          noise=2.0, seed=3)
    return tuple(data.split_part(s) for s in ("train", "val", "test"))


def _inputs(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = {"a": [torch.randn(n, 12, generator=gen), torch.randn(n, 8, generator=gen)],
         "b": [torch.randn(n, 6, generator=gen)]}
    mask = {"a": torch.rand(n, 2, generator=gen) > 0.3, "b": torch.rand(n, 1, generator=gen) > 0.3}
    return x, mask


def test_probe_readout_is_a_linear_probe_added_to_the_fused_logits():
    cfg = MedMIXConfig(dims={"a": [12, 8], "b": [6]}, n_out=3, task="multilabel", hidden_dim=16, dropout=0.0,
                       probe_readout=True)
    torch.manual_seed(0)
    model = MedMIXNet(cfg).eval()
    x, mask = _inputs()
    before = model(x, mask)
    base = before.logits  # zero-initialised read-out: the model without it
    coef, intercept = torch.randn(3, 12 + 8 + 6 + 3), torch.randn(3)
    model.probe.load_probe(coef, intercept)
    out = model(x, mask)
    feats = []
    for m in ("a", "b"):
        for k, t in enumerate(x[m]):
            feats.append(torch.where(mask[m][:, k:k + 1], t, 0.0))
    flags = torch.cat([mask["a"], mask["b"]], 1).float()
    expected = base + torch.cat(feats + [flags], 1) @ coef.T + intercept
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    # the per-modality logits (heads, modality loss) and the fusion weights do not see the read-out
    torch.testing.assert_close(out.modality_logits, before.modality_logits)
    torch.testing.assert_close(out.fusion, before.fusion)
    with pytest.raises(ValueError, match="probe_readout replaces linear_readout"):
        MedMIXConfig(dims={"a": [4]}, n_out=1, task="binary", linear_readout=True, probe_readout=True)


def test_masked_values_never_reach_the_probe_readout():
    cfg = MedMIXConfig(dims={"a": [12, 8], "b": [6]}, n_out=2, task="multilabel", hidden_dim=16, dropout=0.0,
                       probe_readout=True)
    model = MedMIXNet(cfg).eval()
    model.probe.load_probe(torch.randn(2, 29), torch.randn(2))
    x, mask = _inputs(seed=1)
    ref = model(x, mask).logits
    x2 = {m: [torch.where(mask[m][:, k:k + 1], t, torch.nan) for k, t in enumerate(xs)] for m, xs in x.items()}
    torch.testing.assert_close(model(x2, mask).logits, ref)


def test_param_groups_get_the_stated_lr_and_weight_decay(planted):
    train, _, _ = planted
    params = {**FAST, "probe_readout": True, "probe_crossfit": 0, "probe_lr_mult": 5.0, "probe_wd_mult": 0.5,
              "weight_decay": 0.02}
    cfg = model_config(train, params)
    assert cfg.probe_readout and not cfg.linear_readout
    (member,) = build_members(cfg, {}, [0], 0.3, ProbeSettings.from_params(params))
    probe_ids = {id(p) for p in member.model.probe_parameters()}
    assert probe_ids and len(member.model.probe_parameters()) == 3 + 1 + 1  # 3 experts, flag weight, bias
    trainer = EnsembleTrainer(TrainConfig.from_params(params),
                              MedMIXObjective(train.task, MedMIXSettings.from_params({})))
    opt = trainer._optimizer([member])
    seen = set()
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        seen |= ids
        if ids & probe_ids:
            assert ids == probe_ids
            assert group["lr"] == pytest.approx(3e-3 * 5.0) and group["weight_decay"] == pytest.approx(0.01)
        else:
            assert group["weight_decay"] == pytest.approx(0.02)
            assert group["lr"] in (pytest.approx(3e-3), pytest.approx(3e-3 * 0.3))
    assert seen == {id(p) for p in member.model.parameters()}


def test_without_the_option_groups_and_optimizer_are_unchanged(planted):
    train, _, _ = planted
    cfg = model_config(train, {**FAST, "probe_readout": False, "linear_readout": True})
    assert cfg.linear_readout and not cfg.probe_readout
    (member,) = build_members(cfg, {}, [0], 0.3)
    assert member.model.probe is None and len(member.param_groups) == 2
    assert all(len(g) == 2 for g in member.param_groups)  # (params, lr mult): the trainer's old form
    opt = EnsembleTrainer(TrainConfig.from_params(FAST), None)._optimizer([member])
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx(sorted([3e-3, 3e-3 * 0.3]))
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)


def test_bad_group_multipliers_are_rejected():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="multiplier"):
        Member(0, torch.nn.Linear(1, 1), None, [([p], 1.0, -1.0)]).groups()
    with pytest.raises(ValueError, match="probe_lr_mult"):
        ProbeSettings.from_params({"probe_lr_mult": 0})
    with pytest.raises(ValueError, match="probe_init"):
        ProbeSettings.from_params({"probe_init": "yes"})


def test_config_accepts_the_keys_and_checks_their_values():
    import copy
    from pathlib import Path

    import yaml

    from medmix.plan.config import ConfigError, training_params, validate_config

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    ok = copy.deepcopy(cfg)
    ok["method_params"] = {"medmix": {"probe_readout": True, "probe_lr_mult": 3.0, "probe_init": False,
                                      "probe_crossfit": 0, "lp_c_grid": [0.1, 1.0]}}
    validate_config(ok)
    defaults = training_params(validate_config(copy.deepcopy(cfg)), "medmix")
    assert defaults["probe_readout"] is False and defaults["linear_readout"] is False  # the paper's MedMIX
    assert defaults["modality_loss_weight"] == 0.0 and defaults["fusion_warmup_epochs"] == 0
    stale = copy.deepcopy(cfg)
    stale["method_params"] = {"medmix_stacked": {"probe_init": False}}  # its cross-fitting needs the probe's init
    with pytest.raises(ConfigError, match="probe_init"):
        validate_config(stale)
    bad = copy.deepcopy(cfg)
    bad["method_params"] = {"medmix": {"probe_readout": True, "probe_lr_mult": 0}}
    with pytest.raises(ConfigError, match="probe_lr_mult"):
        validate_config(bad)


def test_the_paper_model_has_it_off_and_the_stacked_variant_on():
    assert PAPER_FORM["probe_readout"] is False
    assert not create_method("medmix", dict(FAST)).probe_settings.enabled
    assert create_method("medmix_stacked", dict(FAST)).probe_settings.enabled


def test_reference_probe_matches_linear_probe_and_l2_is_its_penalty(planted):
    train, val, _ = planted
    ref = fit_reference_probe(train, val, {})
    lp = LinearProbe({})
    lp.fit(train, val, [0], Protocol("none"))
    assert ref.c == lp.settings["c"]
    np.testing.assert_allclose(ref.coef.numpy(), lp.coef, rtol=1e-6, atol=1e-7)
    k = known_targets(train)
    assert k == int((~torch.isnan(train.y)).sum()) and ref.l2 == pytest.approx(1.0 / (ref.c * k))
    # mean BCE + λ/2 ||W||² is the probe's objective / K: its gradient in W vanishes at the probe's optimum
    x = torch.from_numpy(probe_features(train)).float()

    def grad_at(coef):
        w = coef.clone().requires_grad_(True)
        logits = x @ w.T + ref.intercept
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, train.y) + 0.5 * ref.l2 * w.pow(2).sum()
        return torch.autograd.grad(loss, w)[0]

    assert grad_at(ref.coef).abs().max() < 0.01 * grad_at(torch.zeros_like(ref.coef)).abs().max()


def test_objective_adds_the_l2_term_only_with_the_option(planted):
    train, _, _ = planted
    cfg = model_config(train, {**FAST, "probe_readout": True})
    (member,) = build_members(cfg, {}, [0], 0.3, ProbeSettings(enabled=True))
    member.model.probe.load_probe(torch.ones(2, 29), torch.zeros(2))
    n = 10
    batch = Batch({m: [t[:n] for t in xs] for m, xs in train.x.items()},
                  {m: t[:n].bool() for m, t in train.mask.items()},
                  train.y[:n])
    config = MedMIXSettings.from_params(FAST)
    member.model.eval()
    plain, parts0 = MedMIXObjective(train.task, config).loss(member, batch, 0)
    with_l2, parts = MedMIXObjective(train.task, config, probe_l2=0.1).loss(member, batch, 0)
    assert "probe_l2" not in parts0
    assert float(parts["probe_l2"]) == pytest.approx(0.5 * 0.1 * 2 * 29)  # bias not penalised
    assert float((with_l2 - plain).detach()) == pytest.approx(float(parts["probe_l2"]), rel=1e-5)


@pytest.mark.parametrize("crossfit", [0, 3])
def test_tiny_fit_starts_from_the_probe_runs_and_is_deterministic_per_seed(planted, crossfit):
    train, val, test = planted
    params = {**FAST, "probe_readout": True, "probe_crossfit": crossfit}
    a = create_method("medmix", params)
    a.fit(train, val, [0, 1], Protocol("none"))
    b = create_method("medmix", params)
    b.fit(train, val, [1], Protocol("none"))
    pa, pb = a.predict(test).prob, b.predict(test).prob
    assert np.isfinite(pa).all()
    np.testing.assert_array_equal(pa[1], pb[0])  # seed 1 alone == seed 1 next to seed 0
    assert not np.array_equal(pa[0], pa[1])
    assert all(entry["probe_C"] == a.selection[0]["probe_C"] for entry in a.selection)
    if crossfit:  # the read-out is frozen: no L2 term
        assert "probe_l2" not in a.curves().columns
    else:
        assert "probe_l2" in a.curves().columns and (a.curves()["probe_l2"] > 0).all()



@pytest.mark.parametrize("init", [True, False])
def test_probe_init_starts_the_readout_from_the_probe(planted, init):
    train, val, _ = planted
    ref = fit_reference_probe(train, val, {})
    method = create_method("medmix", {**FAST, "probe_readout": True, "probe_init": init, "probe_crossfit": 0,
                                      "lr": 1e-12, "max_epochs": 1})
    method.fit(train, val, [0], Protocol("none"))
    probe = method.models[0].probe
    expected = ref.intercept if init else torch.zeros_like(ref.intercept)
    torch.testing.assert_close(probe.flags.bias.detach(), expected, atol=1e-6, rtol=1e-5)
    first = ref.coef[:, :12] if init else torch.zeros(2, 12)
    torch.testing.assert_close(probe.experts["a"][0].weight.detach(), first, atol=1e-6, rtol=1e-5)


def test_crossfit_folds_keep_patients_together_and_are_balanced(planted):
    from medmix.methods.probe_readout import crossfit_folds

    train = planted[0]
    groups = np.array([f"p{i // 2}" for i in range(train.n)])  # two rows per patient
    folds = crossfit_folds(replace(train, groups=groups), 4)
    assert set(folds.tolist()) == {0, 1, 2, 3}
    for patient in np.unique(groups):
        assert len(set(folds[groups == patient].tolist())) == 1
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 2  # patients dealt round-robin
    np.testing.assert_array_equal(folds, crossfit_folds(replace(train, groups=groups), 4))  # fixed seed
    with pytest.raises(ValueError, match="at least 400 training patients"):
        crossfit_folds(train, 400)


def test_out_of_fold_logits_take_each_rows_own_fold_probe():
    from medmix.methods.medmix import out_of_fold_logits
    from medmix.models.medmix import ProbeReadout

    dims = {"a": [12, 8], "b": [6]}
    readouts = []
    for k in range(3):
        r = ProbeReadout(dims, 2)
        r.load_probe(torch.randn(2, 12 + 8 + 6 + 3, generator=torch.Generator().manual_seed(k)),
                     torch.full((2,), float(k)))
        readouts.append(r)
    x, mask = _inputs(n=7)
    fold = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    got = out_of_fold_logits(readouts, x, mask, fold)
    for i, k in enumerate(fold.tolist()):
        expected = readouts[k]({m: [t[i:i + 1] for t in v] for m, v in x.items()},
                               {m: v[i:i + 1] for m, v in mask.items()})
        torch.testing.assert_close(got[i:i + 1], expected)


def test_crossfit_freezes_the_readout_at_the_probe_and_trains_on_out_of_fold_logits(planted):
    train, val, test = planted
    params = {**FAST, "probe_readout": True, "probe_crossfit": 3}
    method = create_method("medmix", params)
    method.fit(train, val, [0], Protocol("none"))
    reference = fit_reference_probe(train, val, params)
    probe = method.models[0].probe
    probe_coef = torch.cat([r.weight for rs in probe.experts.values() for r in rs] + [probe.flags.weight], 1)
    torch.testing.assert_close(probe_coef, reference.coef)  # frozen: never trained
    torch.testing.assert_close(probe.flags.bias, reference.intercept)
    assert np.isfinite(method.predict(test).prob).all()
    assert ProbeSettings.from_params({"probe_readout": False, "probe_crossfit": 3}).crossfit == 0  # inert
    with pytest.raises(ValueError, match="needs probe_init: true"):
        ProbeSettings.from_params({"probe_readout": True, "probe_crossfit": 3, "probe_init": False})
    with pytest.raises(ValueError, match="number of folds >= 2"):
        ProbeSettings.from_params({"probe_readout": True, "probe_crossfit": 1})


def test_crossfit_training_loss_reads_the_out_of_fold_probes(planted):
    from medmix.models.medmix import ProbeReadout

    train = planted[0]
    params = {**FAST, "probe_readout": True}
    config = model_config(train, params)
    member = build_members(config, {}, [0], 1.0, ProbeSettings.from_params({**params, "probe_crossfit": 2}))[0]
    assert all(not p.requires_grad for p in member.model.probe_parameters())
    assert not any(p is q for g in member.param_groups for p in g[0] for q in member.model.probe_parameters())
    x = {m: [t[:16] for t in v] for m, v in train.x.items()}
    mask = {m: v[:16] for m, v in train.mask.items()}
    y = train.y[:16]
    zero = ProbeReadout(config.dims, config.n_out)  # all-zero out-of-fold probes
    tc = MedMIXSettings.from_params(params)
    member.model.eval()  # no dropout: the two losses see the same network
    with torch.no_grad():
        plain, _ = MedMIXObjective(train.task, tc).loss(member, Batch(x, mask, y), epoch=0)
        member.model.probe.load_probe(torch.randn_like(torch.cat(
            [r.weight for rs in member.model.probe.experts.values() for r in rs] + [member.model.probe.flags.weight],
            1)),
            torch.zeros(config.n_out))
        # the objective's fold per training row, read at the batch's rows
        folds = torch.zeros(train.n, dtype=torch.long)
        stacked, _ = MedMIXObjective(train.task, tc, fold_readouts=[zero, zero], folds=folds).loss(
            member, Batch(x, mask, y, rows=torch.arange(16)), epoch=0)
    # the full (now non-zero) probe is swapped out for the all-zero out-of-fold ones: the loss of the bare network
    torch.testing.assert_close(stacked, plain)


def test_per_modality_terms_sum_to_the_readout_without_its_bias():
    cfg = MedMIXConfig(dims={"a": [12, 8], "b": [6]}, n_out=3, task="multilabel", hidden_dim=16, dropout=0.0,
                       probe_readout=True)
    model = MedMIXNet(cfg).eval()
    model.probe.load_probe(torch.randn(3, 12 + 8 + 6 + 3), torch.randn(3))
    x, mask = _inputs()
    parts = model.probe.per_modality(x, mask)
    assert parts.shape == (6, 2, 3)
    torch.testing.assert_close(parts.sum(1) + model.probe.flags.bias, model.probe(x, mask), rtol=1e-5, atol=1e-5)
    only_a = {"a": mask["a"], "b": torch.zeros_like(mask["b"])}
    assert torch.equal(model.probe.per_modality(x, only_a)[:, 1], torch.zeros(6, 3))  # absent b: no term


def test_readout_grid_is_end_to_end_and_chosen_per_seed_on_validation(planted, monkeypatch):
    import medmix.methods.medmix as medmix_module

    train, val, test = planted
    called = []
    monkeypatch.setattr(medmix_module, "fit_reference_probe", lambda *a, **k: called.append(1))
    method = create_method("medmix_readout", {**FAST, "probe_c_grid": [0.01, 1.0]})
    assert type(method).beyond_paper and method.probe_settings.c_grid == (0.01, 1.0)
    method.fit(train, val, [0, 1], Protocol("none"))
    assert not called  # no externally fitted probe: the read-out is the network's own
    curves = method.curves()
    assert set(curves.grid_probe_c) == {0.01, 1.0}
    for entry in method.selection:
        part = curves[curves.seed == entry["seed"]]
        best = part.groupby("grid_probe_c").val_loss.min()
        assert entry["probe_C"] == best.idxmin()  # the lower validation loss of the two points
        assert part[part.selected].grid_probe_c.unique().tolist() == [entry["probe_C"]]
    alone = create_method("medmix_readout", {**FAST, "probe_c_grid": [0.01, 1.0]})
    alone.fit(train, val, [1], Protocol("none"))
    np.testing.assert_array_equal(method.predict(test).prob[1], alone.predict(test).prob[0])
    with pytest.raises(ValueError, match="probe_c_grid"):
        create_method("medmix_readout", {**FAST, "probe_init": True})
