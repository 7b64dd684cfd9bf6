"""The shipped config.yaml, planned (dry run): every table and figure the README and docs name is a
planned output of the default run, so no documented output can silently stop being produced.

(The default's job count per rule is checked in tests/test_init_to_run.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Output files named in the docs: results/tables/..., results/figures/... (md, csv, tex, png, pdf).
NAMED = re.compile(r"results/(?:tables|figures)/[A-Za-z0-9_/]+\.(?:md|csv|tex|png|pdf)")
#: Figures named by their stem (``fig3_random_drop``) in the docs.
FIGURE = re.compile(r"\bfig(?:[0-9]+|_per_label)_[a-z0-9_]*[a-z0-9]\b")
#: Tables named by their stem (``tableE5``, the CP-IMoE grid's ``table_s3``) in the docs.
TABLE = re.compile(r"`(table(?:[12]|E[0-9])|table_s[23]|per_class_f1|sweep|contribution|significance|patterns)[.`]")


def test_every_documented_table_and_figure_is_a_planned_output(tmp_path):
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(REPO / "config.yaml"), "-n", "--summary"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    planned = {line.split("\t")[0].split()[0] for line in out.stdout.splitlines() if line.startswith("results/")}
    assert "results/tables/table1.md" in planned  # the parse found the summary table
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    named, figures, tables = set(), set(), set()
    for doc in docs:
        text = doc.read_text()
        named |= {m for m in NAMED.findall(text) if "<" not in m and "{" not in m}
        figures |= set(FIGURE.findall(text))
        tables |= set(TABLE.findall(text))
    missing = sorted(f for f in named if f not in planned and not f.endswith("report.html"))
    # a file named with a placeholder (router_<dataset>_<method>.png) is checked through its folder
    assert not missing, f"documented outputs the default run does not plan: {missing}"
    stems = {Path(p).stem for p in planned}
    assert figures and not sorted(figures - stems), f"documented figures not planned: {sorted(figures - stems)}"
    assert len(tables) >= 8 and not sorted(tables - stems), f"documented tables not planned: {sorted(tables - stems)}"
