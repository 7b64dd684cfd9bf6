"""Shapley values over modalities, the subset sweep's plan and the contribution outputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medmix.evaluation.contribution import contribution_frames, shapley_values, write_outputs
from medmix.plan.sweep import parse_sweep_name, required_subsets, sweep_jobs, sweep_plan, sweep_run_name

# -- Shapley values ---------------------------------------------------------------------------------------


def _fs(*mods):
    return frozenset(mods)


def test_two_modalities_by_hand():
    v = {_fs("a"): 0.7, _fs("b"): 0.6, _fs("a", "b"): 0.8}
    phi, how = shapley_values(v, ["a", "b"], empty=0.5)
    # φ_a = ½[(v(a) − v(∅)) + (v(ab) − v(b))] = ½[0.2 + 0.2]; φ_b = ½[0.1 + 0.1]
    assert phi == pytest.approx({"a": 0.2, "b": 0.1})
    assert how == "exact over 3 subsets"


def test_three_modalities_by_hand():
    v = {_fs("a"): 0.6, _fs("b"): 0.7, _fs("c"): 0.55, _fs("a", "b"): 0.8, _fs("a", "c"): 0.62,
         _fs("b", "c"): 0.72, _fs("a", "b", "c"): 0.85}
    phi, _ = shapley_values(v, ["c", "a", "b"], empty=0.5)
    # weights 1/3 (|S| = 0), 1/6 (|S| = 1), 1/3 (|S| = 2):
    # φ_a = 0.1/3 + 0.1/6 + 0.07/6 + 0.13/3 = 0.105; φ_b = 0.2/3 + 0.2/6 + 0.17/6 + 0.23/3 = 0.205;
    # φ_c = 0.05/3 + 0.02/6 + 0.02/6 + 0.05/3 = 0.04
    assert phi == pytest.approx({"a": 0.105, "b": 0.205, "c": 0.04})
    assert sum(phi.values()) == pytest.approx(0.85 - 0.5)


def _game(mods, seed):
    """A non-additive game with interactions: v(S) = 0.5 + Σ w_m + Σ pairs u_mn (+ noise per subset)."""
    rng = np.random.default_rng(seed)
    w = dict(zip(mods, rng.uniform(0, 0.1, len(mods)), strict=True))
    u = {p: rng.uniform(-0.02, 0.03) for p in itertools.combinations(mods, 2)}
    v = {}
    for k in range(1, len(mods) + 1):
        for s in itertools.combinations(mods, k):
            v[frozenset(s)] = 0.5 + sum(w[m] for m in s) + sum(u[p] for p in itertools.combinations(s, 2)) \
                + rng.normal(0, 0.01)
    return v, w, u


def _brute_force(v, mods, empty):
    """The permutation definition: mean marginal gain over all |M|! orderings."""
    v = {frozenset(): empty, **v}
    phi = dict.fromkeys(mods, 0.0)
    for order in itertools.permutations(mods):
        before = frozenset()
        for m in order:
            phi[m] += v[before | {m}] - v[before]
            before = before | {m}
    return {m: x / math.factorial(len(mods)) for m, x in phi.items()}


@pytest.mark.parametrize("n", [1, 4, 5])
def test_exact_matches_the_permutation_definition_and_sums_to_full_minus_empty(n):
    mods = [f"m{i}" for i in range(n)]
    v, _, _ = _game(mods, seed=n)
    phi, _ = shapley_values(v, mods, empty=0.5)
    assert phi == pytest.approx(_brute_force(v, mods, 0.5), abs=1e-12)
    assert sum(phi.values()) == pytest.approx(v[frozenset(mods)] - 0.5, abs=1e-12)


def test_sampled_beyond_six_modalities():
    mods = [f"m{i}" for i in range(7)]
    v, w, u = _game(mods, seed=7)
    few = required_subsets(mods, permutations=10, seed=3)
    assert len(few) < 2 ** 7 - 1 and frozenset(mods) in few  # only the prefixes the orderings visit
    phi, _ = shapley_values({s: v[s] for s in few}, mods, empty=0.5, permutations=10, seed=3)
    assert sum(phi.values()) == pytest.approx(v[frozenset(mods)] - 0.5, abs=1e-12)
    need = required_subsets(mods, permutations=200, seed=3)
    phi, how = shapley_values({s: v[s] for s in need}, mods, empty=0.5, permutations=200, seed=3)
    assert how == "sampled, 200 orderings (seed 3)"
    assert sum(phi.values()) == pytest.approx(v[frozenset(mods)] - 0.5, abs=1e-12)  # efficiency per ordering
    exact = _brute_force(v, mods, 0.5)
    assert max(abs(phi[m] - exact[m]) for m in mods) < 0.01
    # An additive game is recovered exactly by any ordering: φ_m = w_m.
    additive = {s: 0.5 + sum(w[m] for m in s) for s in need}
    phi, _ = shapley_values(additive, mods, empty=0.5, permutations=200, seed=3)
    assert phi == pytest.approx(w, abs=1e-12)


def test_missing_subset_is_named():
    with pytest.raises(KeyError, match=r"a\+c"):
        shapley_values({_fs("a"): 0.6, _fs("b"): 0.6, _fs("c"): 0.6, _fs("a", "b"): 0.7, _fs("b", "c"): 0.7,
                        _fs("a", "b", "c"): 0.8}, ["a", "b", "c"], empty=0.5)


# -- sweep plan --------------------------------------------------------------------------------------------


def _cfg(**sweep):
    return {"datasets": {
        "d1": {"role": "development", "modalities": {"frontal": {}, "lateral": {}, "note": {}}},
        "d2": {"role": "development", "modalities": {"frontal": {}, "note": {}, "ehr": {}, "ct": {}}},
        "ext": {"role": "external", "modalities": {"frontal": {}, "note": {}, "ehr": {}, "ct": {}}},
    }, "sweep": sweep}


def test_plan_all_subsets_full_set_is_the_method_run():
    plan = sweep_plan(_cfg(methods=["gbdt", "medmix"]))
    assert set(plan) == {"d1", "d2"}  # development datasets only
    runs = plan["d1"]["gbdt"]["runs"]
    assert len(runs) == 7 and runs["frontal+lateral+note"] == "gbdt"
    assert runs["frontal+note"] == "gbdt@frontal+note" and runs["lateral"] == "gbdt@lateral"
    assert len(plan["d2"]["medmix"]["runs"]) == 15
    jobs = sweep_jobs(_cfg(methods=["gbdt", "medmix"]))
    assert len(jobs) == 2 * (6 + 14) and ("d1", "gbdt") not in jobs
    assert ("d2", "medmix@ct+ehr") in jobs and ("d1", "medmix@ct+ehr") not in jobs


def test_plan_listed_subsets_and_datasets():
    cfg = _cfg(methods=["gbdt"], subsets=[["note"], ["note", "frontal"], ["ehr"]], datasets=["d1"])
    assert sweep_plan(cfg) == {"d1": {"gbdt": {"modalities": ["frontal", "lateral", "note"], "runs": {
        "note": "gbdt@note", "frontal+note": "gbdt@frontal+note", "frontal+lateral+note": "gbdt"}}}}
    assert sweep_plan(_cfg()) == {} and sweep_jobs(_cfg()) == []


def test_run_names_parse_back():
    name = sweep_run_name("medmix_nodistill", {"note", "ct_scan"})
    assert name == "medmix_nodistill@ct_scan+note"
    assert parse_sweep_name(name) == ("medmix_nodistill", ("ct_scan", "note"))
    assert parse_sweep_name("gbdt") is None


# -- contribution from prediction files -------------------------------------------------------------------


def _predictions(tmp_path, dataset="d", mods=("a", "b"), seeds=(0, 1), with_fusion=True):
    """Prediction files of a sweep over ``mods``: a run's score grows with the signal of the
    modalities it sees (``a`` strong, ``b`` weak); the full run carries fusion weights."""
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random((n, 2)) < 0.3).astype(float)
    signal = {"a": 1.5, "b": 0.5}
    files, plan_runs = [], {}
    for k in range(1, len(mods) + 1):
        for subset in itertools.combinations(mods, k):
            run = "m" if len(subset) == len(mods) else sweep_run_name("m", subset)
            plan_runs["+".join(subset)] = run
            frames = []
            for seed in seeds:
                noise = np.random.default_rng(seed * 100 + k).normal(size=(n, 2))
                logit = noise + sum(signal[m] for m in subset) * (2 * y - 1)
                for eval_set, protocol, train_protocol in (("test", "none", "none"), ("val", "none", "none"),
                                                           ("test", "random_drop_50", "none")):
                    cols = {"dataset": dataset, "method": run, "train_protocol": train_protocol, "cohort": dataset,
                            "eval_set": eval_set, "test_protocol": protocol, "seed": seed,
                            "sample_id": [f"s{i}" for i in range(n)]}
                    shift = 0.0 if (eval_set, protocol) == ("test", "none") else 5.0  # other rows must not count
                    for c in range(2):
                        cols[f"prob:l{c}"] = 1 / (1 + np.exp(-(logit[:, c] + shift * rng.normal(size=n))))
                        cols[f"label:l{c}"] = y[:, c]
                    if with_fusion and run == "m":
                        w = np.tile([0.7 + 0.05 * seed, 0.3 - 0.05 * seed], (n, 1))
                        for j, m in enumerate(mods):
                            cols[f"fusion:{m}"] = w[:, j]
                    frames.append(pd.DataFrame(cols))
            path = tmp_path / f"{run}.parquet"
            pd.concat(frames).to_parquet(path)
            files.append(path)
    plan = {dataset: {"m": {"modalities": list(mods), "runs": plan_runs}}}
    return files, plan, y


def test_contribution_from_predictions(tmp_path):
    files, plan, _ = _predictions(tmp_path)
    sweep, contrib = contribution_frames(files, plan, {"d": "multilabel"})
    assert len(sweep) == 3 * 2 and set(sweep.subset) == {"a", "b", "a+b"}
    # The subset scores are the clean-test macro AUROC, computed independently here.
    for _, row in sweep.iterrows():
        frame = pd.read_parquet(tmp_path / f"{row.run}.parquet")
        part = frame[(frame.eval_set == "test") & (frame.test_protocol == "none") & (frame.seed == row.seed)]
        expected = np.mean([roc_auc_score(part[f"label:l{c}"], part[f"prob:l{c}"]) for c in range(2)])
        assert row.auroc == pytest.approx(expected)
        assert row.empty_auroc == 0.5
    by = contrib.set_index("modality")
    per_seed = []
    for s in (0, 1):
        sc = sweep[sweep.seed == s].set_index("subset").auroc
        phi_a = 0.5 * ((sc["a"] - 0.5) + (sc["a+b"] - sc["b"]))
        phi_b = 0.5 * ((sc["b"] - 0.5) + (sc["a+b"] - sc["a"]))
        per_seed.append((phi_a, phi_b, sc["a+b"]))
    per_seed = np.array(per_seed)
    assert by.loc["a", "shapley_auroc"] == pytest.approx(per_seed[:, 0].mean())
    assert by.loc["b", "shapley_auroc"] == pytest.approx(per_seed[:, 1].mean())
    assert by.loc["a", "shapley_auroc_std"] == pytest.approx(per_seed[:, 0].std(ddof=1))
    assert by.shapley_auroc.sum() == pytest.approx(per_seed[:, 2].mean() - 0.5)  # Σφ = v(full) − v(∅)
    assert by.loc["a", "shapley_auroc"] > by.loc["b", "shapley_auroc"] > 0
    assert by.loc["a", "fusion_weight"] == pytest.approx(0.725) and by.loc["b", "fusion_weight"] == pytest.approx(0.275)
    assert by.loc["a", "share_auroc"] + by.loc["b", "share_auroc"] == pytest.approx(1.0)
    # AUPRC: v(∅) is the constant predictor's AUPRC, i.e. the mean test prevalence.
    frame = pd.read_parquet(files[0])
    part = frame[(frame.eval_set == "test") & (frame.test_protocol == "none") & (frame.seed == 0)]
    assert by.loc["a", "empty_auprc"] == pytest.approx(np.mean([part[f"label:l{c}"].mean() for c in range(2)]))
    assert by.shapley_auprc.sum() == pytest.approx(by.full_auprc.iloc[0] - by.empty_auprc.iloc[0])


def test_incomplete_sweep_is_reported_not_guessed(tmp_path):
    files, plan, _ = _predictions(tmp_path)
    del plan["d"]["m"]["runs"]["b"]
    sweep, contrib = contribution_frames([f for f in files if "@b" not in f.name], plan, {"d": "multilabel"})
    assert set(sweep.subset) == {"a", "a+b"}
    assert contrib.shapley_auroc.isna().all()
    assert contrib.estimator.str.contains("not computed: no score for the modality subsets").all()


def test_outputs_regenerate_identically_from_predictions(tmp_path):
    files, plan, _ = _predictions(tmp_path)
    names = ("sweep_md", "sweep_csv", "sweep_png", "contribution_md", "contribution_csv", "contribution_png")
    suffix = {"md": "md", "csv": "csv", "png": "png"}
    out = {k: tmp_path / "out" / f"{k}.{suffix[k.rsplit('_', 1)[1]]}" for k in names}
    write_outputs(files, plan, {"d": "multilabel"}, [0, 1], out)
    first = {k: p.read_bytes() for k, p in out.items()}
    assert all(first.values())
    assert first["sweep_png"][:8] == b"\x89PNG\r\n\x1a\n" and first["contribution_png"][:8] == b"\x89PNG\r\n\x1a\n"
    md = first["sweep_md"].decode()
    assert "★ a" in md and "★ b" in md and "★ a + b" not in md
    assert "| a |" in first["contribution_md"].decode()
    for p in out.values():
        p.unlink()
    write_outputs(files, plan, {"d": "multilabel"}, [0, 1], out)
    for k in ("sweep_md", "sweep_csv", "contribution_md", "contribution_csv"):
        assert out[k].read_bytes() == first[k]
    assert out["sweep_png"].stat().st_size > 1000


def test_probe_shares_are_each_modalitys_share_of_the_readouts_logit_variance():
    from medmix.evaluation.contribution import probe_shares

    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        a, b = rng.normal(0, 2.0, 200), rng.normal(0, 1.0, 200)  # variances 4 : 1
        rows.append(pd.DataFrame({"seed": seed, "eval_set": "test", "test_protocol": "none", "train_protocol": "none",
                                  "probe:a": a, "probe:b": b}))
    frame = pd.concat(rows, ignore_index=True)
    shares = probe_shares(frame, ["a", "b"])
    assert list(shares.index) == [0, 1]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert (shares["a"] > 0.7).all() and (shares["b"] < 0.3).all()
    assert probe_shares(frame.drop(columns="probe:b"), ["a", "b"]) is None  # no read-out: nothing claimed


def test_stacked_medmix_writes_its_probe_path_beside_the_fusion_weights():
    from medmix.methods import create_method
    from medmix.protocols import Protocol
    from medmix.training.synthetic import synthetic_data

    data = synthetic_data(n=160, dims={"a": [6], "b": [4]}, n_labels=1, task="binary", seed=2)
    train, val, test = (data.split_part(s) for s in ("train", "val", "test"))
    fast = dict(lr=3e-3, warmup_epochs=1, max_epochs=2, patience=2, hidden_dim=8, precision="fp32", threads=1,
                probe_crossfit=2)
    stacked = create_method("medmix_stacked", fast)
    stacked.fit(train, val, [0], Protocol("none"))
    pred = stacked.predict(test)
    assert pred.extra_columns["probe"] == ["a", "b"] and pred.extras["probe"].shape == (1, test.n, 2)
    assert "probe" not in create_method("medmix", fast).params.get("extras", {})
    paper = create_method("medmix", fast)
    paper.fit(train, val, [0], Protocol("none"))
    assert "probe" not in paper.predict(test).extras  # the paper's model: the fusion weights are the only path
