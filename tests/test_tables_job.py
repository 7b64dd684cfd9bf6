"""The tables job end to end on tiny synthetic prediction files: every table and CSV, a PNG and a PDF figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from workflow_helpers import tiny_predictions

from medmix.evaluation.tables_job import tables_job

PAPER = [f"{t}.{e}" for t in ("table1", "table2", "tableE2", "tableE3", "tableE4", "tableE5", "tableE6", "tableE7",
                               "tableE8")
         for e in ("md", "tex", "csv")]
# A subset of the figures (rendering dominates the test's time): one PNG and one PDF of each kind.
FIGS = ["fig2_one_modality_drop.png", "fig4_ablation.pdf", "fig_per_label_f1.png", "fig5_efficiency.png"]


def _run_tables_job(tmp_path, folder=None, figures=FIGS, processes: int = 1) -> dict[str, str]:
    """The tables job on six tiny runs of dataset ``dev``; outputs in ``folder`` (default ``tmp_path``)."""
    folder = folder or tmp_path
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for method, train, signal in (("meanavg", "none", 0.2), ("medmix", "none", 0.5), ("medmix", "rd50", 0.45),
                                  ("meanavg", "rd50", 0.15), ("medmix_nodistill", "none", 0.4),
                                  ("medmix_nodistill", "rd50", 0.4)):
        path = tmp_path / f"{method}_{train}.parquet"
        tiny_predictions(method, train, signal, rng).to_parquet(path)
        files.append(str(path))
    (tmp_path / "summary.md").write_text("# Dataset summary: dev\n")
    out = {k: str(folder / f"{k}.out") for k in ("main", "metrics", "robustness", "datasets", "labels",
                                                  "patterns_md", "patterns_csv", "significance")}
    protocols = {"train": {"none": {"kind": "none"}, "rd50": {"kind": "random_drop", "p": 0.5}},
                 "test": {"none": {"kind": "none"}, "rd30": {"kind": "random_drop", "p": 0.3},
                          "note50": {"kind": "drop_one", "modality": "note", "p": 0.5}}}
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"dataset": "dev", "costs": {
        run: {"params": params, "flops_per_sample": 2.0 * params, "peak_mem_bytes": 4 * params, "flops_kind": "flops"}
        for run, params in (("meanavg", 1000), ("medmix", 2000), ("medmix_nodistill", 2000))}}))
    expert = {"modality": "note", "name": "enc", "role": "general", "params": None, "flops_per_sample": None,
              "cost_note": ""}
    tables_job(prediction_files=files, summaries=[str(tmp_path / "summary.md")], tasks={"dev": "multitask"},
               seeds=[0, 1], protocols=protocols,
               run_methods={"meanavg": "meanavg", "medmix_nodistill": "medmix_nodistill", "medmix": "medmix"},
               out=out, paper_outputs=[str(folder / p) for p in PAPER],
               figure_outputs=[str(folder / f) for f in figures],
               cost_files=[str(costs)],
               expert_costs={"dev": {"meanavg": [expert], "medmix": [expert]}}, processes=processes)
    return out


def test_tables_job_writes_every_output(tmp_path):
    out = _run_tables_job(tmp_path)
    for name in [*PAPER, *FIGS]:
        assert (tmp_path / name).stat().st_size > 0, name
    t1 = (tmp_path / "table1.md").read_text()
    assert "| dev | medmix |" in t1 and "| dev | medmix_nodistill |" not in t1 and "p = " in t1
    assert "Not configured" in (tmp_path / "table2.md").read_text()  # no external cohort
    assert "Not configured" in (tmp_path / "tableE2.md").read_text()  # no drop_one train protocol
    e5 = pd.read_csv(tmp_path / "tableE5.csv")
    assert set(e5.rate) == {0.3} and set(e5.method) == {"meanavg", "medmix"}
    e4 = pd.read_csv(tmp_path / "tableE4.csv")
    assert set(e4.rate) == {0.5}
    assert set(pd.read_csv(tmp_path / "tableE8.csv").label) == {"a", "b"}
    sig = pd.read_csv(out["significance"])
    assert {"table1", "tableE3", "tableE4", "tableE5", "tableE7"} <= set(sig.table)
    assert sig[sig.table == "table1"].p_paired.notna().all() and sig.ci_low.notna().all()
    patterns = pd.read_csv(out["patterns_csv"])
    assert {"all samples", "note", "img+note"} <= set(patterns.pattern)
    assert (tmp_path / "fig2_one_modality_drop.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "fig4_ablation.pdf").read_bytes()[:4] == b"%PDF"
    e6 = (tmp_path / "tableE6.md").read_text()
    assert "| dev | medmix |" in e6 and "| dev | medmix_nodistill |" not in e6 and "enc" in e6
    assert pd.read_csv(tmp_path / "tableE6.csv").set_index("method").effscore["medmix"] == 1.0
    assert (tmp_path / "fig5_efficiency.png").read_bytes()[:4] == b"\x89PNG"


def test_figures_drawn_in_a_second_process_are_the_same_files(tmp_path):
    """``processes=2`` draws the figures in a forked process while the tables are written: every
    output is the same file as when drawn in the job's own process (PDFs carry no date)."""
    _run_tables_job(tmp_path, tmp_path / "one")
    _run_tables_job(tmp_path, tmp_path / "two", processes=2)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and set(FIGS) <= set(names)
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_figure_that_cannot_be_written_fails_the_job(tmp_path):
    """An error in the figures' process comes back to the job (here: a figure's folder is a file)."""
    (tmp_path / "a_file").write_text("not a folder")
    for processes in (1, 2):
        with pytest.raises(OSError, match="a_file"):
            _run_tables_job(tmp_path, tmp_path / f"p{processes}",
                            figures=[str(tmp_path / "a_file" / "fig4_ablation.png")], processes=processes)
