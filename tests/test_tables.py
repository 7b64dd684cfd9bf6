"""Tables read runs from the prediction files' columns, and externals use the development thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmix.evaluation.tables import collect, main_table_markdown
from medmix.metrics.classification import tune_thresholds


def _rows(n, eval_set, cohort, rng, shift=0.0):
    y = rng.integers(0, 2, n).astype(float)
    prob = np.clip(0.3 * y + rng.random(n) * 0.7 + shift, 0, 1)
    return pd.DataFrame({"dataset": "dev", "method": "m", "train_protocol": "none", "cohort": cohort,
                         "eval_set": eval_set, "test_protocol": "none", "seed": 0,
                         "sample_id": [f"{cohort}{eval_set}{i}" for i in range(n)], "prob:y": prob, "label:y": y})


def test_collect_uses_columns_and_development_thresholds(tmp_path):
    rng = np.random.default_rng(0)
    own = pd.concat([_rows(40, "val", "dev", rng), _rows(50, "test", "dev", rng)])
    ext = _rows(30, "external:other", "other", rng, shift=0.2)
    # paths say nothing about the run: the columns do
    own.to_parquet(tmp_path / "a.parquet")
    ext.to_parquet(tmp_path / "b.parquet")
    metrics = collect([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], {"dev": "binary"})
    assert set(metrics.eval_set) == {"test", "external:other"}
    assert set(metrics.dataset) == {"dev"} and set(metrics.method) == {"m"}
    val = own[own.eval_set == "val"]
    thr = tune_thresholds(val[["prob:y"]].to_numpy(float), val[["label:y"]].to_numpy(float), objective="mf1")
    ext_pred = (ext["prob:y"].to_numpy() >= thr[0]).astype(float)
    acc = float((ext_pred == ext["label:y"].to_numpy()).mean())
    assert np.isclose(metrics.loc[metrics.eval_set == "external:other", "acc"].item(), acc)
    text = main_table_markdown(metrics, [0])
    assert text.index("## dev — test") < text.index("## dev → other (external validation)")


def test_collect_refuses_files_without_run_columns(tmp_path):
    rng = np.random.default_rng(1)
    _rows(10, "val", "dev", rng).drop(columns=["method"]).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="rerun their evaluate jobs"):
        collect([str(tmp_path / "x.parquet")], {"dev": "binary"})


# -- metrics as the paper reports them ------------------------------------------------------------
from sklearn.metrics import f1_score  # noqa: E402

from medmix.evaluation.tables import collect_all, load_runs, seed_thresholds  # noqa: E402
from medmix.metrics.classification import binary_mf1, compute_metrics, label_metrics, split_notes  # noqa: E402


def test_mf1_averages_both_classes_hand_computed():
    y = np.array([1, 1, 1, 0])
    pred = np.array([1, 1, 0, 0])
    # positive class: tp 2, fp 0, fn 1 -> 4/5; negative class: tp 1, fp 1, fn 0 -> 2/3
    assert np.isclose(binary_mf1(y, pred), (0.8 + 2 / 3) / 2)


def test_mf1_reproduces_the_papers_imbalanced_case():
    # 88 % positives, accuracy 0.90: tp 84, fn 4, tn 6, fp 6 (MMIST-ccRCC's regime: mF1 0.726 at Acc 0.903)
    y = np.array([1] * 88 + [0] * 12, float)
    prob = np.array([0.9] * 84 + [0.1] * 4 + [0.1] * 6 + [0.9] * 6)
    m = compute_metrics(prob[:, None], y[:, None], "binary", np.array([0.5]))
    f1_pos, f1_neg = 168 / 178, 12 / 22
    assert np.isclose(m["acc"], 0.90)
    assert np.isclose(m["mf1"], (f1_pos + f1_neg) / 2)  # 0.7446, far below the positive-class F1 0.944
    assert np.isclose(m["mf1"], f1_score(y, prob >= 0.5, average="macro"))


def test_multitask_mf1_is_per_label_then_macro():
    rng = np.random.default_rng(3)
    y = (rng.random((40, 3)) < 0.4).astype(float)
    prob = rng.random((40, 3))
    thr = np.array([0.3, 0.5, 0.7])
    want = np.mean([f1_score(y[:, c], prob[:, c] >= thr[c], average="macro") for c in range(3)])
    assert np.isclose(compute_metrics(prob, y, "multitask", thr)["mf1"], want)
    per = label_metrics(prob, y, thr)
    assert [p["n"] for p in per] == [40, 40, 40]
    assert np.isclose(per[1]["acc"], ((prob[:, 1] >= 0.5) == y[:, 1]).mean())


def test_absent_class_gives_nan_and_a_note_not_a_crash():
    y = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    prob = np.array([[0.9, 0.2], [0.4, 0.8], [0.7, 0.3]])
    per = label_metrics(prob, y, np.array([0.5, 0.5]))
    assert np.isnan(per[0]["auroc"]) and np.isnan(per[0]["auprc"])
    assert np.isclose(per[0]["mf1"], 0.8)  # only the positive class is present: its F1 (tp 2, fn 1)
    m = compute_metrics(prob, y, "multilabel", np.array([0.5, 0.5]))
    assert np.isclose(m["auroc"], 1.0)  # label 2 alone
    notes = split_notes(y, "multilabel", ["a", "b"], "test")
    assert len(notes) == 1 and "'a' has only class 1" in notes[0]
    empty = compute_metrics(prob[:, :1], y[:, :1], "binary")
    assert np.isnan(empty["auroc"]) and np.isfinite(empty["acc"])


def _run_frame(rng, n_val=60, n_test=80, seeds=(0, 1)):
    frames = []
    for seed in seeds:
        for eval_set, n in (("val", n_val), ("test", n_test)):
            y = (rng.random((n, 2)) < 0.3).astype(float)
            prob = np.clip(0.35 * y + 0.65 * rng.random((n, 2)), 0, 1)
            frames.append(pd.DataFrame({
                "dataset": "dev", "method": "m", "train_protocol": "none", "cohort": "dev", "eval_set": eval_set,
                "test_protocol": "none", "seed": seed, "sample_id": [f"s{i}" for i in range(n)],
                "prob:a": prob[:, 0], "prob:b": prob[:, 1], "label:a": y[:, 0], "label:b": y[:, 1],
                "present:x": rng.random(n) < 0.7, "present:y": True}))
    return pd.concat(frames, ignore_index=True)


def test_thresholds_unchanged_when_test_labels_are_permuted(tmp_path):
    frame = _run_frame(np.random.default_rng(5))
    permuted = frame.copy()
    test = permuted.eval_set == "test"
    rng = np.random.default_rng(9)
    for col in ("label:a", "label:b"):
        permuted.loc[test, col] = rng.permutation(permuted.loc[test, col].to_numpy())
    a = collect_all({("dev", "m", "none"): frame}, {"dev": "multilabel"})
    b = collect_all({("dev", "m", "none"): permuted}, {"dev": "multilabel"})
    for key, thr in a.thresholds.items():
        assert np.array_equal(thr, b.thresholds[key])
    assert not np.allclose(a.metrics.auroc, b.metrics.auroc)  # the test labels did change the metrics
    # and the thresholds do depend on the validation labels
    val = frame[(frame.seed == 0) & (frame.eval_set == "val")]
    flipped = val.assign(**{"label:a": 1 - val["label:a"], "label:b": 1 - val["label:b"]})
    assert not np.array_equal(seed_thresholds(val, ["prob:a", "prob:b"], ["label:a", "label:b"], 0),
                              seed_thresholds(flipped, ["prob:a", "prob:b"], ["label:a", "label:b"], 0))


def test_collect_all_gives_per_label_rows_and_load_runs_groups_files(tmp_path):
    frame = _run_frame(np.random.default_rng(6))
    frame.to_parquet(tmp_path / "p.parquet")
    runs = load_runs([str(tmp_path / "p.parquet")])
    res = collect_all(runs, {"dev": "multitask"})
    assert set(res.labels.label) == {"a", "b"} and len(res.labels) == 2 * 2  # 2 seeds x 2 labels (test)
    macro = res.metrics.set_index("seed").mf1
    per = res.labels.groupby("seed").mf1.mean()
    assert np.allclose(macro.sort_index(), per.sort_index())


def test_compute_metrics_ranking_equals_scikit_learns():
    from medmix.metrics.ranking import macro_ranking

    rng = np.random.default_rng(11)
    prob = np.round(rng.random((70, 3)), 2)  # with ties
    y = (rng.random((70, 3)) < 0.3).astype(float)
    y[5, 2] = np.nan
    got, want = compute_metrics(prob, y, "multilabel"), macro_ranking(prob, y, "multilabel")
    assert np.isclose(got["auroc"], want["auroc"], atol=1e-12) and np.isclose(got["auprc"], want["auprc"], atol=1e-12)
