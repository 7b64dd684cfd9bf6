"""Performance by modality subset and each modality's contribution (Shapley values), from cached predictions.

The modality-combination sweep (:mod:`medmix.plan.sweep`) trains a method on every subset ``S`` of a
dataset's modalities. Its score ``v(S)`` is the macro AUROC (and, separately, AUPRC) of the run
on the **clean test split** (train protocol ``none``, test protocol ``none``), per seed.

Shapley value of modality ``m`` (a cooperative game over the modalities, HAIM-style):

    φ_m = Σ_{S ⊆ M∖{m}} |S|! (|M| − |S| − 1)! / |M|! · (v(S ∪ {m}) − v(S))

computed **exactly** from every subset's score for up to :data:`EXACT_MAX` = 6 modalities, and
beyond that as the **sampled permutation estimate** (Castro et al. 2009): the mean over sampled
orderings of each modality's marginal gain when it joins the modalities before it (the orderings
come from a seeded generator, and the sweep trains exactly the prefixes they visit). Both satisfy
``Σ_m φ_m = v(M) − v(∅)``.

``v(∅)``: the score of a predictor that reads no modality, i.e. a constant (the training
prevalence), evaluated by the same metric code on the same test rows: macro AUROC 0.5 and macro
AUPRC = the test prevalence of each label (averaged over labels).

Values are computed per seed and then averaged (mean ± std over seeds; Shapley values are linear
in ``v``, so the mean equals the Shapley value of the mean scores). For a method whose predictions
carry per-sample fusion weights (``fusion:<modality>``, MedMIX), the contribution table also
reports the mean weight of each modality over the clean test samples of its full run (an absent
modality has weight 0, so a sample's weights sum to 1), next to the Shapley share
``φ_m / Σ φ`` of the same method; for a model with a linear-probe read-out (``probe:<modality>``,
``medmix_stacked``) also each modality's share of the read-out's logit variance
(:func:`probe_shares`), the other path from the modality to the logit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmix.metrics.classification import compute_metrics
from medmix.plan.sweep import EXACT_MAX, SUBSET_SEP, required_subsets, sampled_orderings, subset_label
from medmix.store import read_predictions
from medmix.table_text import markdown_table

#: The metrics the sweep and the Shapley values are computed for.
SCORES = ("auroc", "auprc")


def shapley_values(scores: Mapping[frozenset[str], float], modalities: Sequence[str], empty: float,
                   permutations: int = 64, seed: int = 0) -> tuple[dict[str, float], str]:
    """Shapley value of each modality from subset scores ``v(S)`` (``v(∅) = empty``).

    Exact for up to :data:`EXACT_MAX` modalities, otherwise the mean marginal gain over
    ``permutations`` orderings drawn with ``seed``. Returns the values and a description of the
    estimator. A needed subset without a score is an error naming it.
    """
    mods = sorted(modalities)
    if not mods:
        raise ValueError("Shapley values need at least one modality")
    v = {frozenset(): float(empty), **{frozenset(k): float(x) for k, x in scores.items()}}
    missing = [s for s in required_subsets(mods, permutations, seed) if s not in v]
    if missing:
        raise KeyError(f"no score for the modality subsets {[subset_label(s) for s in missing[:8]]}"
                       f"{' …' if len(missing) > 8 else ''} (the sweep must train them)")
    n = len(mods)
    if n <= EXACT_MAX:
        phi = {}
        for m in mods:
            others = [o for o in mods if o != m]
            total = 0.0
            for k in range(n):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                for s in itertools.combinations(others, k):
                    total += weight * (v[frozenset(s) | {m}] - v[frozenset(s)])
            phi[m] = total
        return phi, f"exact over {2 ** n - 1} subsets"
    gains = {m: 0.0 for m in mods}
    orderings = sampled_orderings(mods, permutations, seed)
    for order in orderings:
        before: frozenset[str] = frozenset()
        for m in order:
            gains[m] += v[before | {m}] - v[before]
            before = before | {m}
    return {m: g / len(orderings) for m, g in gains.items()}, f"sampled, {len(orderings)} orderings (seed {seed})"


# -- scores from prediction files -----------------------------------------------------------------
def _clean_test(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame.eval_set == "test") & (frame.test_protocol == "none") & (frame.train_protocol == "none")]


def run_scores(predictions: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per seed of one run: the clean-test metrics of :data:`SCORES` and those of the constant predictor."""
    labels = [c[len("prob:") :] for c in predictions.columns if c.startswith("prob:")]
    rows = []
    for seed, part in _clean_test(predictions).groupby("seed"):
        prob = part[[f"prob:{x}" for x in labels]].to_numpy(float)
        y = part[[f"label:{x}" for x in labels]].to_numpy(float)
        got = compute_metrics(prob, y, task)
        empty = compute_metrics(np.full_like(prob, 0.5), y, task)  # no modality: a constant score
        rows.append({"seed": int(seed), "n": len(part), **{s: got[s] for s in SCORES},
                     **{f"empty_{s}": empty[s] for s in SCORES}})
    return pd.DataFrame(rows)


def fusion_weights(predictions: pd.DataFrame, modalities: Sequence[str]) -> pd.DataFrame | None:
    """Per seed, the mean ``fusion:<modality>`` weight over the clean test samples (None without them)."""
    cols = [f"fusion:{m}" for m in modalities]
    if not set(cols) <= set(predictions.columns):
        return None
    clean = _clean_test(predictions)
    out = clean.groupby("seed")[cols].mean()
    out.columns = list(modalities)
    return out


def probe_shares(predictions: pd.DataFrame, modalities: Sequence[str]) -> pd.DataFrame | None:
    """Per seed, each modality's share of the probe read-out's logit variance over the clean test
    samples: ``Var(P_m) / Σ_m' Var(P_m')`` with ``P_m`` the read-out's terms of modality ``m`` (its
    experts and presence flags; ``probe:<m>``, ``medmix_stacked``). None without a read-out."""
    cols = [f"probe:{m}" for m in modalities]
    if not set(cols) <= set(predictions.columns):
        return None
    var = _clean_test(predictions).groupby("seed")[cols].var(ddof=0)
    total = var.sum(axis=1).replace(0.0, np.nan)
    out = var.div(total, axis=0)
    out.columns = list(modalities)
    return out


def read_runs(prediction_files: Sequence[str | Path]) -> dict[tuple[str, str], pd.DataFrame]:
    """``(dataset, run name) -> predictions``, identified by the files' own columns."""
    runs: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for path in prediction_files:
        frame = read_predictions(path)
        missing = {"dataset", "method", "train_protocol", "eval_set", "test_protocol", "seed"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: prediction file without the columns {sorted(missing)}; rerun its evaluate job")
        for key, part in frame.groupby(["dataset", "method"], sort=False):
            runs.setdefault(key, []).append(part)
    return {k: pd.concat(v, ignore_index=True) for k, v in runs.items()}


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")  # one seed: no spread


def contribution_frames(prediction_files: Sequence[str | Path], plan: Mapping[str, Any], tasks: Mapping[str, str],
                        permutations: int = 64, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The subset-performance table (one row per dataset × method × subset × seed) and the
    contribution table (one row per dataset × method × modality), from cached predictions.

    ``plan`` (:func:`medmix.plan.sweep.sweep_plan`): dataset -> method -> ``{"modalities": [...],
    "runs": {subset label: run name}}``; the full set's run is the method's own run.
    """
    runs = read_runs(prediction_files)
    sweep_rows, contrib_rows = [], []
    for dataset, methods in plan.items():
        for method, spec in methods.items():
            mods = sorted(spec["modalities"])
            per_subset: dict[frozenset[str], pd.DataFrame] = {}
            for label, run in spec["runs"].items():
                if (dataset, run) not in runs:
                    raise KeyError(f"no predictions of run {run!r} on {dataset!r} among the inputs "
                                   "(rerun its evaluate job)")
                scores = run_scores(runs[(dataset, run)], tasks[dataset])
                if scores.empty:
                    raise ValueError(f"run {run!r} on {dataset!r}: no clean test predictions")
                subset = frozenset(label.split(SUBSET_SEP))
                per_subset[subset] = scores
                for r in scores.to_dict("records"):
                    sweep_rows.append({"dataset": dataset, "method": method, "subset": subset_label(subset),
                                       "n_modalities": len(subset), "single": len(subset) == 1, "run": run, **r})
            seeds = sorted(set.intersection(*(set(s.seed) for s in per_subset.values())))
            full = frozenset(mods)
            full_run = runs[(dataset, spec["runs"][subset_label(full)])] if full in per_subset else None
            weights = fusion_weights(full_run, mods) if full_run is not None else None
            probe = probe_shares(full_run, mods) if full_run is not None else None
            phis: dict[str, dict[str, list[float]]] = {s: {m: [] for m in mods} for s in SCORES}
            estimator, reason, ends = "", "", {s: ([], []) for s in SCORES}
            for sd in seeds:
                for score in SCORES:
                    v = {k: float(f.loc[f.seed == sd, score].iloc[0]) for k, f in per_subset.items()}
                    empties = [float(f.loc[f.seed == sd, f"empty_{score}"].iloc[0]) for f in per_subset.values()]
                    empty = empties[0]
                    try:
                        phi, estimator = shapley_values(v, mods, empty, permutations, seed)
                    except KeyError as err:
                        reason = str(err).strip("'\"")
                        break
                    for m in mods:
                        phis[score][m].append(phi[m])
                    ends[score][0].append(v[full])
                    ends[score][1].append(empty)
                if reason:
                    break
            for m in mods:
                row: dict[str, Any] = {"dataset": dataset, "method": method, "modality": m, "n_seeds": len(seeds)}
                for score in SCORES:
                    values = phis[score][m] if not reason else []
                    mean, std = _mean_std(values)
                    per_seed_total = np.sum([phis[score][o] for o in mods], axis=0) if values else np.array([])
                    share = (_mean_std(np.asarray(values) / per_seed_total)[0]
                             if values and np.all(per_seed_total != 0) else float("nan"))
                    row.update({f"shapley_{score}": mean, f"shapley_{score}_std": std, f"share_{score}": share,
                                f"full_{score}": _mean_std(ends[score][0])[0],
                                f"empty_{score}": _mean_std(ends[score][1])[0]})
                wm, ws = _mean_std(weights[m]) if weights is not None else (float("nan"), float("nan"))
                pm, ps = _mean_std(probe[m]) if probe is not None else (float("nan"), float("nan"))
                row.update({"fusion_weight": wm, "fusion_weight_std": ws, "probe_share": pm, "probe_share_std": ps,
                            "estimator": estimator if not reason else f"not computed: {reason}"})
                contrib_rows.append(row)
    return pd.DataFrame(sweep_rows), pd.DataFrame(contrib_rows)


# -- tables -------------------------------------------------------------------------------------------
def _fmt(mean: float, std: float, digits: int = 4) -> str:
    """``mean ± std``; the mean alone where the std is undefined (one seed)."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


def sweep_summary(sweep: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per dataset × method × subset (numeric columns, for the CSV and figure)."""
    keys = ["dataset", "method", "subset", "n_modalities", "single", "run"]
    agg = sweep.groupby(keys, sort=False).agg(
        **{f"{s}_mean": (s, "mean") for s in SCORES},
        **{f"{s}_std": (s, lambda x: x.std(ddof=1) if len(x) > 1 else float("nan")) for s in SCORES},
        seeds=("seed", "nunique"), n=("n", "first")).reset_index()
    return agg.sort_values(["dataset", "method", "n_modalities", "subset"], kind="stable").reset_index(drop=True)


def sweep_markdown(summary: pd.DataFrame, seeds: Sequence[int]) -> str:
    lines = ["# Performance by modality subset", "",
             f"Clean test split (no train- or test-time protocol); macro AUROC / AUPRC, mean ± std over seeds "
             f"{list(seeds)}. One model per subset, trained from the same cached embeddings (no re-extraction); "
             "the full set is the method's own run. ★ = a single modality.", ""]
    for (dataset, method), part in summary.groupby(["dataset", "method"], sort=False):
        table = pd.DataFrame({
            "subset": [("★ " if s else "") + name.replace(SUBSET_SEP, " + ")
                       for name, s in zip(part.subset, part.single, strict=True)],
            "modalities": part.n_modalities.to_numpy(),
            "AUROC": [_fmt(m, s) for m, s in zip(part.auroc_mean, part.auroc_std, strict=True)],
            "AUPRC": [_fmt(m, s) for m, s in zip(part.auprc_mean, part.auprc_std, strict=True)],
            "seeds": part.seeds.to_numpy(), "run": [f"`{r}`" for r in part.run]})
        lines += [f"## {dataset} — {method}", "", markdown_table(table), ""]
    return "\n".join(lines)


def contribution_markdown(contrib: pd.DataFrame, seeds: Sequence[int]) -> str:
    lines = ["# Modality contribution", "",
             "Shapley values over modalities of each method's clean-test macro AUROC / AUPRC, from the subset "
             f"sweep's scores (per seed, then mean ± std over seeds {list(seeds)}); they sum to v(full) − v(∅). "
             "v(∅) is the score of the constant (prevalence) predictor on the same rows: AUROC 0.5, AUPRC the "
             "test prevalence. Share = φ / Σφ. Fusion weight: the method's own mean per-sample fusion weight of "
             "the modality over the clean test samples of its full run (absent = 0; MedMIX). In the paper's MedMIX "
             "the fused logit is Σ_m w_m ℓ_m, so the fusion weight is the modality's only path to the logit. A "
             "model with a linear-probe read-out (medmix_stacked) adds the probe's terms of every modality to the "
             "fused logit: 'probe share' is each modality's share of the read-out's logit variance over the same "
             "samples, the other path from that modality to the logit; '—' where the model has no read-out.", ""]
    for (dataset, method), part in contrib.groupby(["dataset", "method"], sort=False):
        first = part.iloc[0]
        table = pd.DataFrame({
            "modality": part.modality.to_numpy(),
            "Shapley AUROC": [_fmt(m, s) for m, s in zip(part.shapley_auroc, part.shapley_auroc_std, strict=True)],
            "share AUROC": [f"{v:.1%}" if np.isfinite(v) else "n/a" for v in part.share_auroc],
            "Shapley AUPRC": [_fmt(m, s) for m, s in zip(part.shapley_auprc, part.shapley_auprc_std, strict=True)],
            "share AUPRC": [f"{v:.1%}" if np.isfinite(v) else "n/a" for v in part.share_auprc],
            "fusion weight": [_fmt(m, s, 3) if np.isfinite(m) else "—"
                              for m, s in zip(part.fusion_weight, part.fusion_weight_std, strict=True)],
            "probe share": [_fmt(m, s, 3) if np.isfinite(m) else "—"
                            for m, s in zip(part.probe_share, part.probe_share_std, strict=True)]})
        lines += [f"## {dataset} — {method}", "",
                  f"v(full) AUROC {first.full_auroc:.4f}, v(∅) {first.empty_auroc:.4f}; v(full) AUPRC "
                  f"{first.full_auprc:.4f}, v(∅) {first.empty_auprc:.4f}; {first.estimator}; {first.n_seeds} seeds.",
                  "",
                  markdown_table(table), ""]
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------------------
def sweep_figure(summary: pd.DataFrame, runs: Sequence[str] = ()):
    """HAIM Fig. 2 style: per dataset, the test AUROC of every modality subset, one point per method
    (mean, std over seeds as error bar; ★ = single modality). ``runs``: the configured runs, which
    fix each method's style (:mod:`medmix.evaluation.styles`). Returns the matplotlib figure."""
    from medmix.evaluation.styles import FONTS, legend_outside, method_handle, method_styles, pyplot

    plt = pyplot()
    styles = method_styles([*runs, *summary.method])
    datasets = list(dict.fromkeys(summary.dataset))
    heights = [0.7 + 0.3 * summary[summary.dataset == d].subset.nunique() for d in datasets]
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(len(datasets), 1, figsize=(4.5, sum(heights)), squeeze=False, layout="constrained",
                                 gridspec_kw={"height_ratios": heights})
        for ax, dataset in zip(axes[:, 0], datasets, strict=True):
            part = summary[summary.dataset == dataset]
            subsets = list(dict.fromkeys(part.sort_values(["n_modalities", "subset"]).subset))
            methods = list(dict.fromkeys(part.method))
            step = 0.8 / len(methods)
            for i, method in enumerate(methods):
                rows = part[part.method == method].set_index("subset").reindex(subsets)
                style = styles[method]
                ax.errorbar(rows.auroc_mean, np.arange(len(subsets)) + (i - (len(methods) - 1) / 2) * step,
                            xerr=rows.auroc_std, color=style.colour, marker=style.marker, ms=5, capsize=2, ls="")
            ax.set_yticks(np.arange(len(subsets)),
                          [("★ " if SUBSET_SEP not in s else "") + s.replace(SUBSET_SEP, " + ") for s in subsets])
            ax.invert_yaxis()
            ax.set_xlabel("test macro AUROC (mean ± std over seeds)")
            ax.set_title(f"{dataset}: performance by modality subset")
        legend_outside(fig, [method_handle(styles[m], m, line=False) for m in dict.fromkeys(summary.method)])
    return fig


def contribution_figure(contrib: pd.DataFrame, runs: Sequence[str] = ()):
    """Per dataset: each modality's Shapley share of the AUROC gain per method (solid), and beside it
    the method's mean fusion weight (hatched ``xx``) and, for a probe read-out, each modality's share
    of the read-out's logit variance (hatched ``//``), std over seeds as error bars. ``runs``: as
    :func:`sweep_figure`. Returns the matplotlib figure."""
    from matplotlib.patches import Patch

    from medmix.evaluation.styles import FONTS, legend_outside, method_styles, pyplot

    plt = pyplot()
    styles = method_styles([*runs, *contrib.method])
    datasets = list(dict.fromkeys(contrib.dataset))
    kinds = [("share_auroc", None, "Shapley share", None),
             ("fusion_weight", "fusion_weight_std", "fusion weight", "xx"),
             ("probe_share", "probe_share_std", "probe share", "//")]
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(1, len(datasets), figsize=(3.5 * len(datasets), 2.8), squeeze=False,
                                 layout="constrained")
        handles = {}
        for ax, dataset in zip(axes[0], datasets, strict=True):
            part = contrib[contrib.dataset == dataset]
            mods = list(dict.fromkeys(part.modality))
            bars = [(m, col, std, label, hatch) for m in dict.fromkeys(part.method) for col, std, label, hatch in kinds
                    if col in part and part[part.method == m][col].notna().any()]
            width = 0.8 / len(bars)
            for i, (method, col, std, label, hatch) in enumerate(bars):
                rows = part[part.method == method].set_index("modality").reindex(mods)
                colour = styles[method].colour
                ax.bar(np.arange(len(mods)) + (i - (len(bars) - 1) / 2) * width, rows[col].to_numpy(float),
                       width=width, yerr=rows[std].to_numpy(float) if std else None, capsize=2, color=colour,
                       hatch=hatch, edgecolor="white" if hatch else None, linewidth=0)
                handles.setdefault((method, label), Patch(facecolor=colour, hatch=hatch, edgecolor="white",
                                                          label=f"{method}: {label}"))
            ax.set_xticks(np.arange(len(mods)), mods)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_ylabel("share of v(full) − v(∅) (AUROC)\n/ mean weight / probe share")
            ax.set_title(f"{dataset}: modality contribution")
        legend_outside(fig, list(handles.values()))
    return fig


def write_outputs(prediction_files: Sequence[str | Path], plan: Mapping[str, Any], tasks: Mapping[str, str],
                  seeds: Sequence[int], out: Mapping[str, str | Path], permutations: int = 64, seed: int = 0,
                  runs: Sequence[str] = ()) -> None:
    """Every output of the ``contribution`` rule: ``sweep_md``, ``sweep_csv``, ``sweep_png``,
    ``contribution_md``, ``contribution_csv``, ``contribution_png`` (``runs``: the configured runs,
    which fix the figures' method styles)."""
    from medmix.evaluation.styles import save_png
    from medmix.store.atomic import atomic_path, write_text_atomic

    sweep, contrib = contribution_frames(prediction_files, plan, tasks, permutations, seed)
    summary = sweep_summary(sweep)
    with atomic_path(out["sweep_csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    write_text_atomic(out["sweep_md"], sweep_markdown(summary, seeds))
    with atomic_path(out["contribution_csv"]) as tmp:
        contrib.to_csv(tmp, index=False)
    write_text_atomic(out["contribution_md"], contribution_markdown(contrib, seeds))
    save_png(sweep_figure(summary, runs), out["sweep_png"], dpi=110)
    save_png(contribution_figure(contrib, runs), out["contribution_png"], dpi=110)
