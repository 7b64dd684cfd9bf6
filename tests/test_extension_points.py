"""A new dataset adapter and a new table are each one new module: the examples in docs/datasets.md
and docs/protocols-and-tables.md, written into a copy of the repository (never into this checkout),
are picked up by the config check, the workflow's plan and the jobs without any other edit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from workflow_helpers import tiny_predictions

REPO = Path(__file__).resolve().parents[1]


def _doc_block(doc: str, first_line: str) -> str:
    """The ```python block of ``docs/<doc>`` whose first line is ``first_line``."""
    text = (REPO / "docs" / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if b.splitlines()[0] == first_line]
    assert len(found) == 1, f"docs/{doc}: no single example starting with {first_line!r}"
    return found[0]


def _copy_with(tmp_path: Path, module: str, source: str) -> Path:
    """A copy of the repository's code and workflow with ``source`` added as ``module`` (a path)."""
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".snakemake", "results", "resources", "logs")
    for name in ("medmix", "extractors", "workflow"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore, symlinks=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, copy / name)
    target = copy / module
    assert not target.exists(), f"{module} already exists: the example must be a new module"
    target.write_text(source)
    return copy


def _run(copy: Path, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _snakemake(copy: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(copy, sys.executable, "-m", "snakemake", "--snakefile", str(copy / "Snakefile"), "--directory",
                str(workdir), *args, cwd=workdir)


@pytest.mark.timeout(900)
def test_a_new_dataset_adapter_is_one_module(tmp_path):
    copy = _copy_with(tmp_path, "medmix/datasets/my_registry.py",
                      _doc_block("datasets.md", "# medmix/datasets/my_registry.py"))
    data = tmp_path / "registry"
    (data / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.fromarray(np.full((16, 16), 20 * i, dtype=np.uint8)).save(data / "img" / f"{i}.png")
        rows.append({"sample_id": f"s{i}", "patient_id": f"p{i}", "split": ["train", "val", "test"][i % 3],
                     "outcome": str(i % 2), "frontal": f"img/{i}.png", "note": f"note {i} with words"})
    import pandas as pd

    pd.DataFrame(rows).to_csv(data / "records.csv", index=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    dataset = {"adapter": "my_registry", "root": str(data), "task": "binary", "split_column": "split"}
    (workdir / "my.yaml").write_text(yaml.safe_dump({"datasets": {"reg": dataset}}))
    # the config check knows the adapter and its own key; a typo of that key is refused with a hint
    check = ("import sys, yaml\nfrom medmix.plan.config import ConfigError, validate_config\n"
             "from medmix.plan.overlay import effective_config, load_yaml\n"
             "cfg = effective_config(load_yaml('{repo}/config.yaml'), [load_yaml('my.yaml')])\n"
             "print(validate_config(cfg)['datasets']['reg']['modalities'])\n"
             "cfg['datasets']['reg']['roott'] = cfg['datasets']['reg'].pop('root')\n"
             "try:\n    validate_config(cfg)\nexcept ConfigError as err:\n    print(err)\n")
    out = _run(copy, sys.executable, "-c", check.format(repo=copy), cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'frontal': {'kind': 'image'" in out.stdout and "'note': {'kind': 'text'" in out.stdout
    assert "datasets.reg.roott" in out.stdout and "did you mean 'root'" in out.stdout, out.stdout
    # the workflow builds its cohort (prepare_dataset) and plans its extractions
    run = _snakemake(copy, workdir, "--cores", "1", "results/reg/summary.json", "--configfile",
                     str(copy / "config.yaml"), "my.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    cohort = pd.read_parquet(workdir / "results/reg/cohort.parquet")
    assert len(cohort) == 12 and {"input:frontal", "input:note"} <= set(cohort.columns)
    assert cohort["input:note"].iloc[3] == "note 3 with words"
    assert json.loads((workdir / "results/reg/summary.json").read_text())
    plan = _snakemake(copy, workdir, "-n", "results/reg/features/note/minilm_l6.parquet",
                      "--configfile", str(copy / "config.yaml"), "my.yaml")
    assert plan.returncode == 0 and "rule extract:" in plan.stdout, plan.stderr[-3000:]


@pytest.mark.timeout(900)
def test_a_new_table_is_one_module(tmp_path):
    module = "medmix/evaluation/extra_tables/test_protocols.py"
    copy = _copy_with(tmp_path, module, _doc_block("protocols-and-tables.md", f"# {module}"))
    # the tables job writes it from tiny predictions, with the paper tables' layout
    rng = np.random.default_rng(0)
    files = []
    for method, signal in (("meanavg", 0.2), ("medmix", 0.5)):
        path = tmp_path / f"{method}.parquet"
        tiny_predictions(method, "none", signal, rng).to_parquet(path)
        files.append(str(path))
    (tmp_path / "summary.md").write_text("# Dataset summary: dev\n")
    job = f"""
from medmix.evaluation.paper_tables import table_modules, table_specs
from medmix.evaluation.tables_job import tables_job
names = [spec.name for spec in table_specs()]
assert names[-1] == "table_test_protocols" and "table1" in names, names
assert "medmix.evaluation.extra_tables.test_protocols" in table_modules()
out = {{k: "{tmp_path}/" + k + ".out" for k in ("main", "metrics", "robustness", "datasets", "labels", "patterns_md",
                                           "patterns_csv", "significance")}}
protocols = {{"train": {{"none": {{"kind": "none"}}}},
             "test": {{"none": {{"kind": "none"}}, "rd30": {{"kind": "random_drop", "p": 0.3}},
                      "note50": {{"kind": "drop_one", "modality": "note", "p": 0.5}}}}}}
tables_job(prediction_files={files!r}, summaries=["{tmp_path}/summary.md"], tasks={{"dev": "multitask"}}, seeds=[0, 1],
           protocols=protocols, run_methods={{"meanavg": "meanavg", "medmix": "medmix"}}, out=out,
           paper_outputs=["{tmp_path}/" + n + "." + e for n in names for e in ("md", "tex", "csv")])
"""
    ran = _run(copy, sys.executable, "-c", job, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    md = (tmp_path / "table_test_protocols.md").read_text()
    assert md.startswith("# Every test-time protocol (models trained clean)"), md[:200]
    for protocol in ("none", "rd30", "note50"):
        assert f"| dev | {protocol} | medmix |" in md, md
    assert (tmp_path / "table_test_protocols.tex").stat().st_size > 0
    assert (tmp_path / "table_test_protocols.csv").stat().st_size > 0
    # the default run plans its three files as outputs of the tables rule
    workdir = tmp_path / "work"
    workdir.mkdir()
    plan = _snakemake(copy, workdir, "-n", "--summary", "--configfile", str(copy / "config.yaml"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = {line.split("\t")[0] for line in plan.stdout.splitlines()}
    assert {f"results/tables/table_test_protocols.{e}" for e in ("md", "tex", "csv")} <= planned
