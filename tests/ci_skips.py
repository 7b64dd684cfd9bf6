"""A pytest hook: in CI (``CI`` set), a test skipped because a module could not be imported fails.

CI installs every package the tests need, so such a skip means a broken install, not an optional
feature. A skip whose reason names an optional extra
(``pytest.importorskip(..., reason="pip install -e '.[cluster]'")``) stays a skip. Registered by
``tests/conftest.py``; also usable as a plugin (``-p ci_skips``).
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``CI`` set), a test skipped because a module could not be imported fails instead: CI
    installs every package the tests need, so such a skip means a broken install. A skip whose reason
    names an optional extra (``pytest.importorskip(..., reason="pip install -e '.[cluster]'")``) stays
    a skip."""
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or call.excinfo is None:
        return
    message = str(call.excinfo.value)
    if message.startswith("could not import"):
        report.outcome = "failed"
        report.longrepr = f"CI: {message} (a package CI installs is missing: a broken install, not a skip)"
