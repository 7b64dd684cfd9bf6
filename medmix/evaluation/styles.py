"""How every figure draws a method: one colour and one marker per method, the same in every figure,
and the figures' font sizes (readable at the saved size).

The order that assigns the styles: the paper's model (``medmix``, so it gets the first, strongest
colour), the other registered methods in the registry's order (:func:`medmix.methods.known_methods`), then
the other run names (variants, members of a method
family such as ``large_ref_note``) in the order the caller lists them (the configured runs). Colours:
twenty strong ones first (tab20's dark half, tab20b's two darker shades), then twenty pale ones (40
distinct colours); markers cycle through twelve, so no two of the first 120 methods share both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: rcParams of every figure: no text under 7 pt at the saved size.
FONTS = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
         "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 9}
MARKERS = "osD^v<>pPX*h"


@dataclass(frozen=True)
class MethodStyle:
    colour: tuple[float, float, float, float]
    marker: str


def _palette() -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    tab20, tab20b = colormaps["tab20"].colors, colormaps["tab20b"].colors
    strong = (*tab20[0::2], *tab20b[0::4], *tab20b[1::4])
    pale = (*tab20[1::2], *tab20b[2::4], *tab20b[3::4])
    return [(*c, 1.0) for c in (*strong, *pale)]


def style_order(runs: Iterable[str] = ()) -> list[str]:
    """``medmix``, the other registered methods in registry order, then the other names of ``runs`` in their order."""
    from medmix.methods import known_methods

    registered = sorted((m for m in known_methods() if "<" not in m),  # a family's placeholder is no run name
                        key=lambda m: m != "medmix")
    return [*registered, *dict.fromkeys(r for r in runs if r not in registered)]


def method_styles(runs: Iterable[str] = ()) -> dict[str, MethodStyle]:
    """Method or run name -> its style, for every registered method and every name of ``runs``."""
    palette = _palette()
    return {name: MethodStyle(palette[i % len(palette)], MARKERS[i % len(MARKERS)])
            for i, name in enumerate(style_order(runs))}


def pyplot():
    """matplotlib's pyplot on the Agg backend (imported lazily: the tables import without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_handle(style: MethodStyle, label: str, line: bool = True):
    """A legend entry for a method: its colour and marker (with a line for line plots)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color=style.colour, marker=style.marker, ls="-" if line else "", label=label)


def legend_outside(fig, handles: list) -> None:
    """One figure legend right of the axes (the figure widened to hold it; constrained layout keeps
    it off every axes), in as many columns as its entries need to fit the figure's height."""
    if not handles:
        return
    rows = max(1, int((fig.get_figheight() * 72 - 24) / 13))  # a 7 pt entry is ~13 pt tall
    ncols = -(-len(handles) // rows)
    chars = max(len(h.get_label()) for h in handles)
    fig.set_figwidth(fig.get_figwidth() + ncols * (0.45 + 0.055 * chars))
    fig.legend(handles=handles, loc="outside right upper", ncols=ncols, frameon=False)


def no_data_page(text: str):
    """The figure of something that was not run: a short page saying which setting produces it."""
    plt = pyplot()
    fig = plt.figure(figsize=(6, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def drop_unused(axes, used: set[tuple[int, int]]) -> None:
    """Remove the axes of a panel grid that received no data (only what was run is drawn)."""
    for (i, j), ax in np.ndenumerate(axes):
        if (i, j) not in used:
            ax.remove()


def save_png(fig, path, dpi: int) -> None:
    """Write ``fig`` as PNG atomically (fonts as drawn: FONTS) and close it."""
    from medmix.store.atomic import atomic_path

    plt = pyplot()
    with plt.rc_context(FONTS), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
