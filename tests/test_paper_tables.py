"""The paper's tables: rows and blocks from the configured protocols, bold best, notes, significance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medmix.evaluation import paper_tables as pt
from medmix.evaluation.significance import boot_metrics, paired_p, table_significance
from medmix.evaluation.tables import collect_all
from medmix.metrics.classification import ap_rows, auroc_rows

PROTOCOLS = {"train": {"none": {"kind": "none"}, "rd50": {"kind": "random_drop", "p": 0.5}},
             "test": {"none": {"kind": "none"}, "note30": {"kind": "drop_one", "modality": "note", "p": 0.3},
                      "rd30": {"kind": "random_drop", "p": 0.3}}}
RUNS = {"medmix": "medmix", "meanavg": "meanavg", "medmix_nodistill": "medmix_nodistill"}  # MedMIX goes last


def _metrics():
    rows = []
    value = {"meanavg": 0.6, "medmix_nodistill": 0.65, "medmix": 0.7}
    for method, base in value.items():
        for seed in (0, 1, 2):
            for train, test, eval_set in (("none", "none", "test"), ("none", "note30", "test"),
                                          ("none", "rd30", "test"), ("rd50", "none", "test"),
                                          ("none", "none", "external:ext")):
                v = base + 0.01 * seed - (0.1 if test != "none" else 0)
                rows.append({"dataset": "dev", "method": method, "train_protocol": train, "seed": seed,
                             "eval_set": eval_set, "test_protocol": test, "n": 10,
                             "auroc": v, "auprc": v - 0.2, "mf1": v - 0.1, "acc": v + 0.1})
    return pd.DataFrame(rows)


def _labels(metrics):
    clean = metrics[(metrics.train_protocol == "none") & (metrics.test_protocol == "none")]
    return pd.concat([clean.assign(label=x) for x in ("a", "b")], ignore_index=True)


def test_tables_follow_configured_protocols_and_runs():
    m = _metrics()
    tables = pt.build_tables(m, _labels(m), PROTOCOLS, RUNS, {"dev": "multitask"})
    assert set(tables) == set(pt.PAPER_TABLES)
    assert list(pt.summarise(tables["table1"]).method) == ["meanavg", "medmix"]  # the ablation is E7's
    assert list(pt.summarise(tables["tableE7"]).method) == ["medmix_nodistill", "medmix"]
    two = pd.concat([m, m.assign(dataset="a_second")])
    ordered = pt.build_tables(two, _labels(two), PROTOCOLS, RUNS, {"dev": "binary", "a_second": "binary"},
                              dataset_order=["dev", "a_second"])
    assert list(dict.fromkeys(pt.summarise(ordered["table1"]).dataset)) == ["dev", "a_second"]
    assert set(pt.summarise(tables["table2"]).cohort) == {"ext"}
    e3 = pt.summarise(tables["tableE3"])
    assert set(zip(e3.rate, e3.modality, strict=True)) == {(0.3, "note")} and len(e3) == 2
    assert set(pt.summarise(tables["tableE4"]).rate) == {0.5}
    assert set(pt.summarise(tables["tableE5"]).rate) == {0.3}
    assert tables["tableE2"].frame.empty  # no drop_one train protocol configured
    assert set(pt.summarise(tables["tableE8"]).label) == {"a", "b"}
    s = pt.summarise(tables["table1"])
    assert np.isclose(s.loc[s.method == "medmix", "auroc_mean"].item(), 0.71)
    assert np.isclose(s.loc[s.method == "medmix", "auroc_std"].item(), 0.01)


def test_markdown_bold_best_and_notes():
    m = _metrics()
    tables = pt.build_tables(m, _labels(m), PROTOCOLS, RUNS, {"dev": "binary"})
    md = pt.to_markdown(tables["table1"], [0, 1, 2])
    lines = [line for line in md.splitlines() if line.startswith("| dev")]
    assert lines[0].split(" | ")[1] == "meanavg" and "**" not in lines[0]
    assert lines[1].count("**0.") == 4  # medmix best in every metric
    assert "mF1 = F1 averaged over both classes" in md
    assert "Not configured" in pt.to_markdown(tables["tableE2"], [0])
    assert "protocols.train" in pt.to_markdown(tables["tableE2"], [0])
    assert tables["tableE8"].frame.empty  # a binary dataset has no per-task table
    tex = pt.to_latex(tables["table1"], [0, 1, 2])
    assert "\\textbf{0.7100 $\\pm$ 0.0100}" in tex and "\\toprule" in tex
    csv = pt.to_csv_frame(tables["table1"])
    assert (csv.loc[csv.method == "medmix", "auroc_best"].item()
            and not csv.loc[csv.method == "meanavg", "auroc_best"].item())
    assert "note" in pt.to_csv_frame(tables["tableE2"]).columns


def test_bold_per_block_and_ties():
    s = pd.DataFrame({"dataset": ["a", "a", "b", "b"], "method": ["x", "y", "x", "y"],
                      **{f"{k}_mean": [0.5, 0.6, 0.7, 0.7] for k in ("auroc", "auprc", "mf1", "acc")}})
    mask = pt.best_mask(s, ["dataset"])
    assert mask.auroc.tolist() == [False, True, True, True]


def test_fast_bootstrap_metrics_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(5, 40))
        p, y = np.round(rng.random(n), 1), (rng.random(n) < 0.4).astype(float)
        if y.min() == y.max():
            continue
        assert np.isclose(auroc_rows(p[None], y[None])[0], roc_auc_score(y, p), atol=1e-12)
        assert np.isclose(ap_rows(p[None], y[None])[0], average_precision_score(y, p), atol=1e-12)
    from medmix.metrics.classification import compute_metrics

    prob, y, thr = rng.random((30, 2)), (rng.random((30, 2)) < 0.5).astype(float), np.array([0.4, 0.6])
    got = boot_metrics(prob, y, thr, np.arange(30)[None])
    want = compute_metrics(prob, y, "multilabel", thr)
    assert all(np.isclose(got[k][0], want[k]) for k in want)


def test_paired_test_and_significance_from_predictions():
    assert np.isnan(paired_p([0.5], [0.4]))  # one seed: undefined
    assert paired_p([0.70, 0.72, 0.71, 0.73], [0.60, 0.63, 0.61, 0.62]) < 0.01
    rng = np.random.default_rng(1)
    n = 120
    y = (rng.random(n) < 0.4).astype(float)
    frames = {}
    for method, signal in (("medmix", 0.6), ("meanavg", 0.1)):
        rows = []
        for seed in (0, 1, 2):
            for eval_set in ("val", "test"):
                prob = np.clip(signal * y + (1 - signal) * rng.random(n), 0, 1)
                rows.append(pd.DataFrame({"dataset": "dev", "method": method, "train_protocol": "none",
                                          "eval_set": eval_set, "test_protocol": "none", "seed": seed,
                                          "sample_id": [f"s{i:03d}" for i in range(n)], "prob:y": prob, "label:y": y}))
        frames[("dev", method, "none")] = pd.concat(rows, ignore_index=True)
    res = collect_all(frames, {"dev": "binary"})
    tables = pt.build_tables(res.metrics, res.labels, {"train": {}, "test": {}},
                             {"meanavg": "meanavg", "medmix": "medmix"},
                             {"dev": "binary"})
    sig = table_significance(tables["table1"].frame, ["dataset"], frames, res.thresholds, {"dev": "binary"}, n_boot=100)
    auroc = sig[sig.metric == "auroc"].iloc[0]
    assert auroc.other == "meanavg" and auroc["diff"] > 0.2
    assert auroc.ci_low > 0 and auroc.ci_low < auroc["diff"] < auroc.ci_high
    assert auroc.p_paired < 0.05
    csv = pt.to_csv_frame(tables["table1"], sig)
    assert np.isfinite(csv.loc[csv.method == "medmix", "auroc_p_paired"].item())
    assert "p = " in pt.to_markdown(tables["table1"], [0, 1, 2], sig)


@pytest.mark.parametrize("run,method,expected",
                         [("medmix", "medmix", False), ("medmix_nodistill", "medmix_nodistill", True),
                                                 ("no_rag", "medmix", True), ("meanavg", "meanavg", False)])
def test_ablation_rows(run, method, expected):
    assert pt.is_ablation(run, method) is expected


def test_improvements_beyond_the_paper_are_their_own_marked_rows():
    runs = {**RUNS, "medmix_stacked": "medmix_stacked"}
    assert pt.improvement_runs(runs) == {"medmix_stacked"}  # declared by the method class (beyond_paper)
    m = _metrics()
    m = pd.concat([m, m[m.method == "medmix"].assign(method="medmix_stacked", auroc=lambda f: f.auroc + 0.05)])
    tables = pt.build_tables(m, _labels(m), PROTOCOLS, runs, {"dev": "multitask"})
    assert list(pt.summarise(tables["table1"]).method) == ["meanavg", "medmix", "medmix_stacked"]
    assert "medmix_stacked" not in set(tables["tableE7"].frame.method)  # an improvement, not an ablation
    md = pt.to_markdown(tables["table1"], [0, 1, 2])
    assert f"| medmix_stacked {pt.BEYOND_MARK} |" in md and "| medmix |" in md and pt.BEYOND_NOTE in md
    assert "$^\\dagger$" in pt.to_latex(tables["table1"], [0, 1, 2])
    assert pt.BEYOND_NOTE not in pt.to_markdown(tables["tableE7"], [0, 1, 2])
    sig = table_significance(tables["table1"].frame, ["dataset"], {}, {}, {"dev": "multitask"}, n_boot=10,
                             improvements=frozenset({"medmix_stacked"}))
    auroc = sig[sig.metric == "auroc"]
    # the paper's MedMIX vs the best *other* method (never its own improvement); the improvement vs both
    assert set(zip(auroc.method, auroc.other, strict=True)) == {
        ("medmix", "meanavg"), ("medmix_stacked", "meanavg"), ("medmix_stacked", "medmix")}
    vs_paper = auroc[(auroc.method == "medmix_stacked") & (auroc.other == "medmix")].iloc[0]
    assert vs_paper["diff"] == pytest.approx(0.05)
    assert "medmix_stacked vs medmix" in pt.to_markdown(tables["table1"], [0, 1, 2], sig)


#: A run and a label name holding every LaTeX special character, and how the .tex must write it.
SPECIAL = "r&u%n$#_{x}~^\\z"
SPECIAL_TEX = r"r\&u\%n\$\#\_\{x\}\textasciitilde{}\textasciicircum{}\textbackslash{}z"


def test_latex_escapes_every_special_character_in_names():
    m = _metrics().replace({"method": {"meanavg": SPECIAL}})
    labels = _labels(m).replace({"label": {"a": SPECIAL}})
    runs = {SPECIAL: "meanavg", "medmix": "medmix"}
    tables = pt.build_tables(m, labels, PROTOCOLS, runs, {"dev": "multitask"})
    rows = pt.to_latex(tables["table1"], [0, 1, 2]).splitlines()
    assert f"dev & {SPECIAL_TEX} & 0.6100 $\\pm$ 0.0100 & 0.4100 $\\pm$ 0.0100 & 0.5100 $\\pm$ 0.0100 & " \
           "0.7100 $\\pm$ 0.0100 & 3 \\\\" in rows
    e8 = pt.to_latex(tables["tableE8"], [0, 1, 2]).splitlines()
    assert sum(line.startswith(f"dev & {SPECIAL_TEX} & {SPECIAL_TEX} & ") for line in e8) == 1  # label and run
    assert sum(line.startswith(f"dev & {SPECIAL_TEX} & medmix & \\textbf{{") for line in e8) == 1
    md = pt.to_markdown(tables["table1"], [0, 1, 2])  # Markdown keeps the name as it is
    assert f"| dev | {SPECIAL} | 0.6100 ± 0.0100 |" in md
    piped = pt.build_tables(m.replace({"method": {SPECIAL: "p|q"}}), labels, PROTOCOLS, {"p|q": "meanavg"},
                            {"dev": "multitask"})
    assert "| dev | p\\|q | 0.6100 ± 0.0100 |" in pt.to_markdown(piped["table1"], [0])  # a | escaped, not a cell
