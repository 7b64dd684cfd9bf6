"""Markdown and LaTeX tables from pandas frames: the one writer of every table the pipeline prints.

Markdown: ``DataFrame.to_markdown`` (tabulate), a GitHub pipe table whose cells are written as
they are (no re-formatting of numbers, no padding) with ``|`` escaped. LaTeX: ``Styler.to_latex``
(jinja2), a booktabs ``table`` whose caption, headers and cells go through :func:`latex_escape`,
and whose bold cells (a mask) are wrapped in ``\\textbf{}``.
"""

from __future__ import annotations

import re

import pandas as pd

#: LaTeX's special characters and what stands for each in text.
LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
#: Symbols the tables use, in LaTeX math.
LATEX_SYMBOLS = {"±": r"$\pm$", "†": r"$^\dagger$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$",
                 "×": r"$\times$", "Δ": r"$\Delta$"}
_LATEX = {**LATEX_SPECIAL, **LATEX_SYMBOLS}
_LATEX_PATTERN = re.compile("|".join(map(re.escape, _LATEX)))


def latex_escape(text: object) -> str:
    """``text`` as LaTeX text: every special character (``& % $ # _ { } ~ ^ \\``) escaped, the
    tables' symbols (± † ≥ ≤ ≈ × Δ) in math mode; in one pass, so nothing is escaped twice."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX[m.group(0)], str(text))


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` (its index left out) as a Markdown pipe table, each cell as ``str`` gives it."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    shown = frame.map(cell).rename(columns=cell)
    return shown.to_markdown(index=False, disable_numparse=True, stralign=None, numalign=None)


def latex_table(frame: pd.DataFrame, caption: str, column_format: str, bold: pd.DataFrame | None = None) -> str:
    """``frame`` (its index left out) as a LaTeX ``table`` (placement ``t``, centred, booktabs rules)
    with ``caption``; ``bold``: a frame of booleans over (some of) ``frame``'s columns."""
    styler = frame.astype(str).style.hide(axis="index").format(latex_escape)
    styler = styler.format_index(latex_escape, axis="columns")
    if bold is not None:
        mask = bold.reindex(index=frame.index, columns=frame.columns, fill_value=False).astype(bool)
        styler = styler.apply(lambda _: mask.map(lambda b: "textbf: --rwrap;" if b else ""), axis=None)
    return styler.to_latex(caption=latex_escape(caption), column_format=column_format, hrules=True, position="t",
                           position_float="centering", environment="table")
