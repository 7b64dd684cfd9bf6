"""The Snakemake report of a tiny run that writes every kind of table and figure (the paper's, the
modality sweep's and contribution's, CP-IMoE's grid), built and opened in a real headless browser
(Debian's chromium): every table and figure is listed with a caption, the page logs nothing to its
console, and a screenshot is saved under the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from workflow_helpers import snakemake, tiny_config

#: A real Snakemake run (minutes) and a browser: in the `slow` set.
pytestmark = pytest.mark.slow

#: Console messages of the report page that are not errors: the Tailwind CSS script the Snakemake
#: report bundles announces itself on every load.
HARMLESS_CONSOLE = ("cdn.tailwindcss.com should not be used in production",)

#: Run after the page has loaded, inside it: the report's own search view lists every result
#: (``re:.``), the first figure is shown (for the screenshot), and the results without a caption
#: are written into the page for the DOM dump to carry.
DRIVER = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    app.setView({navbarMode: "searchresults", searchTerm: "re:."});
    var uncaptioned = Object.keys(results).filter(function (p) { return !results[p].caption.trim(); });
    var check = document.createElement("pre");
    check.id = "medmix-check";
    check.textContent = JSON.stringify({uncaptioned: uncaptioned});
    document.body.appendChild(check);
    setTimeout(function () {
      var fig = Object.keys(results).sort().find(function (p) { return /^results\\/figures\\/.*\\.png$/.test(p); });
      app.setView({content: "img", contentPath: results[fig].data_uri, resultPath: fig});
    }, 300);
  }, 300);
});
</script>"""


def chromium() -> str:
    """Debian's chromium; missing: a failure in CI (``CI`` set, .ci/run installs it), else a skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium not found: CI installs it (.ci/run: apt-get install -y chromium)")
    pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")


def report_config() -> dict:
    """One two-modality cohort, two runs, the modality sweep and CP-IMoE's grid (test time only)."""
    cfg = tiny_config()
    cfg["methods"] = ["meanavg", "cpimoe"]
    openi = cfg["datasets"]["demo_openi"]
    openi["modalities"] = {m: openi["modalities"][m] for m in ("frontal", "note")}
    cfg["datasets"] = {"demo_openi": openi}
    cfg["demo"]["cohorts"] = {"demo_openi": cfg["demo"]["cohorts"]["demo_openi"]}
    cfg["experts"]["profiles"]["demo"]["text"] = {"committee": [{"name": "text_keywords", "role": "biomed"},
                                                                {"name": "text_char_ngrams", "role": "general"}]}
    cfg["training"].update({"max_epochs": 3})
    cfg["protocols"]["test"] = {"none": {"kind": "none"}, "random_drop_50": {"kind": "random_drop", "p": 0.5},
                                "drop_one_note_50": {"kind": "drop_one", "modality": "note", "p": 0.5}}
    cfg["sweep"] = {"methods": ["meanavg"], "datasets": ["demo_openi"], "n_seeds": 1}
    cfg["missing_grid"] = {"methods": ["cpimoe"], "settings": ["primary"], "rates": [0.4], "mode": "test_only",
                           "n_seeds": None, "figure_methods": ["cpimoe"]}
    return cfg


def written_tables_and_figures(workdir: Path) -> set[str]:
    """Every table and figure the run wrote, in the form the report carries: a figure's PNG (its PDF
    lies beside it), a table's CSV (its Markdown and LaTeX versions beside it), else its Markdown."""
    files = [p for top in ("results/tables", "results/figures") for p in (workdir / top).rglob("*") if p.is_file()]
    out = set()
    for p in files:
        rel = p.relative_to(workdir).as_posix()
        if p.suffix in (".png", ".csv") or (p.suffix == ".md" and not p.with_suffix(".csv").exists()):
            out.add(rel)
        elif p.suffix not in (".pdf", ".tex", ".md"):
            raise AssertionError(f"{rel}: a kind of output this test does not know")
    return out


class _Cells(HTMLParser):
    """The text of every table cell of the rendered page, and the driver's check block."""

    def __init__(self):
        super().__init__()
        self.cells, self.check, self._in = [], "", None

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._in, self.cells = "td", [*self.cells, ""]
        elif tag == "pre" and ("id", "medmix-check") in attrs:
            self._in = "check"

    def handle_endtag(self, tag):
        if tag in ("td", "pre"):
            self._in = None

    def handle_data(self, data):
        if self._in == "td":
            self.cells[-1] += data
        elif self._in == "check":
            self.check += data


def test_report_lists_every_table_and_figure_in_a_browser(tmp_path):
    browser = chromium()
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(report_config()))
    snakemake(workdir, "--cores", "2", "all")
    snakemake(workdir, "--cores", "1", "--report", "report.html")
    written = written_tables_and_figures(workdir)
    assert {"results/tables/sweep.png", "results/tables/contribution.csv", "results/tables/cpimoe/table_s3.md",
            "results/tables/cpimoe/router_demo_openi_cpimoe.png", "results/figures/fig3_random_drop.png",
            "results/tables/table1.csv"} <= written  # every kind of output was written

    html = (workdir / "report.html").read_text()
    page = tmp_path / "report_check.html"
    at = html.rfind("</body>")
    page.write_text(html[:at] + DRIVER + html[at:])
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
              "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    dump = subprocess.run([*common, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert dump.returncode == 0, dump.stderr[-3000:]
    console = re.findall(r":CONSOLE[^\]]*\] (.*)", dump.stderr)
    errors = [m for m in console if not any(h in m for h in HARMLESS_CONSOLE)]
    assert not errors, f"the report page logged to its console: {errors}"

    parsed = _Cells()
    parsed.feed(dump.stdout)
    listed = {c.strip() for c in parsed.cells if c.strip().startswith("results/")}
    assert written <= listed, f"written but not in the report: {sorted(written - listed)}"
    assert listed <= written, f"in the report but not written by the run: {sorted(listed - written)}"
    assert parsed.check, "the page's script did not run"
    assert json.loads(parsed.check)["uncaptioned"] == [], "results without a caption"

    screenshot = tmp_path / "report.png"
    shot = subprocess.run([*common, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True,
                          timeout=180)
    assert shot.returncode == 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot.stderr[-3000:]
    print(f"report screenshot: {screenshot}")
