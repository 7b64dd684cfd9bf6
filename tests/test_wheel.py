"""A normal (non-editable) install works: the wheel carries the schema and the knowledge base, and
``medmix --version`` / ``medmix info`` run from it, away from the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_wheel_runs_medmix_info_without_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = wheels.glob("medmix-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "medmix/schemas/config.schema.yaml" in names
    assert "extractors/knowledge/data/demo_kb.jsonl" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    # the installed copy, not the checkout: PYTHONPATH's entry comes before the editable install's finder
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import medmix; print(medmix.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout
    version = subprocess.run([sys.executable, "-m", "medmix.cli", "--version"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("medmix "), version.stderr
    info = subprocess.run([sys.executable, "-m", "medmix.cli", "info", "--base", str(REPO / "config.yaml")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr[-3000:]
    assert "demo_openi" in info.stdout and "(valid)" in info.stdout
