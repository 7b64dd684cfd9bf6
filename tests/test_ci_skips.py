"""The CI skip rule (tests/ci_skips.py) can fail: an import skip under ``CI`` is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(("ci", "reason", "expected"), [
    ("1", None, "1 failed"), ("", None, "1 skipped"), ("1", "pip install -e '.[cluster]'", "1 skipped")])
def test_an_import_skip_fails_only_in_ci(tmp_path, ci, reason, expected):
    extra = f", reason={reason!r}" if reason else ""
    (tmp_path / "test_probe.py").write_text(
        f"import pytest\n\ndef test_x():\n    pytest.importorskip('no_such_module_for_medmix'{extra})\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(HERE)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_probe.py")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert expected in out.stdout, out.stdout + out.stderr
