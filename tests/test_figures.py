"""Every figure drawn from small synthetic tables: no empty panel, no legend over a panel, text
readable at the saved size, one colour per method in every figure, y-axes scaled to the values."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.text import Text

from medmix.evaluation import efficiency_table as eff
from medmix.evaluation import paper_tables as pt
from medmix.evaluation.contribution import contribution_figure, sweep_figure
from medmix.evaluation.cpimoe_tables import gate_figure
from medmix.evaluation.figures import FIGURES, figure_makers
from medmix.evaluation.styles import FONTS, method_styles, pyplot
from medmix.metrics.classification import METRICS

#: Configured runs: methods, a variant of medmix (unregistered name), an improvement beyond the paper.
RUN_METHODS = {"meanavg": "meanavg", "concat": "concat", "max": "max", "medmix_uniform": "medmix",
               "medmix_nodistill": "medmix_nodistill", "medmix": "medmix", "medmix_stacked": "medmix_stacked"}
TEST_PROTOCOLS = {"none": {"kind": "none"}, "rd30": {"kind": "random_drop", "p": 0.3},
                  "rd50": {"kind": "random_drop", "p": 0.5},
                  "note50": {"kind": "drop_one", "modality": "note", "p": 0.5},
                  "img50": {"kind": "drop_one", "modality": "img", "p": 0.5}}


def _metrics() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-seed macro and per-label metrics between 0.9 and 1.0 (test-time protocols only)."""
    rng = np.random.default_rng(0)
    rows, label_rows = [], []
    for run, protocol, seed in itertools.product(RUN_METHODS, TEST_PROTOCOLS, (0, 1, 2)):
        drop = 0.0 if protocol == "none" else TEST_PROTOCOLS[protocol]["p"] * 0.08
        key = {"dataset": "dev", "method": run, "train_protocol": "none", "test_protocol": protocol,
               "eval_set": "test", "seed": seed}
        rows.append({**key, **{m: 0.97 - drop - 0.03 * rng.random() for m in METRICS}})
        label_rows += [{**key, "label": label, **{m: 0.96 - 0.03 * rng.random() for m in METRICS}}
                       for label in ("effusion", "opacity", "cardiomegaly")]
    return pd.DataFrame(rows), pd.DataFrame(label_rows)


@pytest.fixture(scope="module")
def figures() -> dict[str, object]:
    """Every figure kind: the paper's five, the sweep, the contribution and a router heatmap."""
    metrics, labels = _metrics()
    tables = pt.build_tables(metrics, labels, {"train": {"none": {"kind": "none"}}, "test": TEST_PROTOCOLS},
                             RUN_METHODS, {"dev": "multilabel"})
    costs = {("dev", r): {"params": 1000 * (k + 1), "flops_per_sample": 3000.0 * (k + 1),
                          "peak_mem_bytes": 8000 * (k + 1)}
             for k, r in enumerate(RUN_METHODS)}
    efficiency = eff.efficiency_frame(tables["table1"], costs, {})
    subsets = ["img", "note", "img+note"]
    sweep = pd.DataFrame([{"dataset": "dev", "method": m, "subset": s, "n_modalities": s.count("+") + 1,
                           "auroc_mean": 0.9 + 0.02 * k + 0.01 * i, "auroc_std": 0.005}
                          for i, m in enumerate(("meanavg", "medmix")) for k, s in enumerate(subsets)])
    contrib = pd.DataFrame([{"dataset": "dev", "method": m, "modality": mod, "share_auroc": share,
                             "fusion_weight": share if m == "medmix" else np.nan, "fusion_weight_std": 0.02,
                             "probe_share": np.nan, "probe_share_std": np.nan}
                            for m in ("meanavg", "medmix") for mod, share in (("img", 0.7), ("note", 0.3))])
    gates = pd.DataFrame([{"dataset": "dev", "method": "cpimoe", "setting": "primary", "rate": r, "expert": e,
                           "weight": w, "kind": "gate"} for r in (0.2, 0.4) for e, w in (("a", 0.3), ("b", 0.7))])
    plt = pyplot()
    runs = list(RUN_METHODS)
    with plt.rc_context(FONTS):
        out = {name: make() for name, make in figure_makers(tables, efficiency, runs).items()}
        out["sweep"] = sweep_figure(sweep, runs)
        out["contribution"] = contribution_figure(contrib, runs)
        out["router"] = gate_figure(gates, "dev", "cpimoe")
        for fig in out.values():
            fig.canvas.draw()
    yield out
    for fig in out.values():
        plt.close(fig)


def _has_data(ax) -> bool:
    lines = any(np.isfinite(np.asarray(line.get_ydata(), float)).any() for line in ax.lines)
    patches = any(np.isfinite(p.get_height()) and p.get_height() != 0 for p in ax.patches if hasattr(p, "get_height"))
    points = any(len(c.get_offsets()) for c in ax.collections)
    return lines or patches or points or bool(ax.images)


def test_every_figure_is_drawn(figures):
    assert set(FIGURES) <= set(figures)


def test_no_empty_panel_and_no_legend_over_a_panel(figures):
    for name, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        frame = fig.bbox
        assert fig.axes, name
        for ax in fig.axes:
            assert _has_data(ax), f"{name}: empty panel {ax.get_title()!r}"
        legends = [*fig.legends, *[ax.get_legend() for ax in fig.axes if ax.get_legend()]]
        if name != "router":  # a heatmap has a colour bar, no legend
            assert legends, name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert (frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1
                    and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1), \
                f"{name}: legend cut off by the figure's edge"
            for ax in fig.axes:
                assert not box.overlaps(ax.get_tightbbox(renderer)), f"{name}: legend over {ax.get_title()!r}"


def test_text_is_readable_at_the_saved_size(figures):
    for name, fig in figures.items():
        for text in fig.findobj(Text):
            if text.get_text().strip() and text.get_visible():
                assert text.get_fontsize() >= 7, f"{name}: {text.get_text()!r} at {text.get_fontsize()} pt"


def _legend_colours(fig) -> dict[str, tuple]:
    legend = fig.legends[0]
    out = {}
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
        colour = handle.get_facecolor() if hasattr(handle, "get_facecolor") and not hasattr(handle, "get_color") \
            else handle.get_color()
        out[text.get_text().split(":")[0].split(" ")[0]] = to_rgba(colour)
    return out


def test_one_method_one_colour_in_every_figure(figures):
    styles = method_styles(RUN_METHODS)
    for name in ("fig3_random_drop", "fig4_ablation", "fig5_efficiency", "sweep", "contribution"):
        colours = _legend_colours(figures[name])
        assert colours["medmix"] == to_rgba(styles["medmix"].colour), name
    # the drawn points use the legend's colours, and ~26 methods get distinct colours
    fig4 = figures["fig4_ablation"]
    drawn = {to_rgba(line.get_color()) for ax in fig4.axes for line in ax.lines if len(line.get_xdata())}
    assert drawn == set(_legend_colours(fig4).values())
    many = list(method_styles([f"run_{k}" for k in range(60)]).values())
    assert len({s.colour for s in many[:26]}) == 26 and len({(s.colour, s.marker) for s in many}) == len(many)


def test_only_what_was_run_is_drawn(figures):
    # Fig. 2: test-time drops only (Table E3) -> one row of four metric panels, no train-time row.
    assert len(figures["fig2_one_modality_drop"].axes) == len(METRICS)
    # y-axes follow the values (0.9-1.0), not 0
    for ax in figures["fig4_ablation"].axes:
        assert ax.get_ylim()[0] > 0.8


def test_a_figure_with_nothing_run_is_a_page_without_panels():
    metrics, labels = _metrics()
    tables = pt.build_tables(metrics[metrics.test_protocol == "none"], labels,
                             {"train": {"none": {"kind": "none"}}, "test": {"none": {"kind": "none"}}},
                             RUN_METHODS, {"dev": "multilabel"})
    plt = pyplot()
    with plt.rc_context(FONTS):
        fig = figure_makers(tables)["fig3_random_drop"]()
    assert not fig.axes and "random_drop" in " ".join(t.get_text() for t in fig.texts)
    plt.close(fig)


def test_a_legend_of_many_methods_stays_beside_the_panels():
    """The default run's size: ~24 runs in one legend (in columns), still off every panel and inside the figure."""
    runs = {f"run_{k:02d}": "meanavg" for k in range(24)}
    rows = [{"dataset": "dev", "method": r, "train_protocol": "none", "test_protocol": p, "eval_set": "test",
             "seed": s, **{m: 0.9 + 0.001 * k + (0.0 if p == "none" else -0.02) for m in METRICS}}
            for k, r in enumerate(runs) for p in ("none", "rd30") for s in (0, 1)]
    tables = pt.build_tables(pd.DataFrame(rows), pd.DataFrame(), {"train": {"none": {"kind": "none"}},
                             "test": {k: TEST_PROTOCOLS[k] for k in ("none", "rd30")}}, runs, {"dev": "binary"})
    plt = pyplot()
    with plt.rc_context(FONTS):
        fig = figure_makers(tables, runs=list(runs))["fig3_random_drop"]()
        fig.canvas.draw()
    renderer, (legend,) = fig.canvas.get_renderer(), fig.legends
    box = legend.get_window_extent(renderer)
    assert len(legend.get_texts()) == 24 and fig.bbox.y0 - 1 <= box.y0 and box.y1 <= fig.bbox.y1 + 1
    assert box.x1 <= fig.bbox.x1 + 1 and not any(box.overlaps(ax.get_tightbbox(renderer)) for ax in fig.axes)
    plt.close(fig)
