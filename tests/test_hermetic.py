"""The test session is hermetic: private caches, forced offline mode, no network (tests/hermetic.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import SESSION_DIR
from hermetic import NetworkAccessError, blocked_connections, fail_if_blocked

CACHE_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "SENTENCE_TRANSFORMERS_HOME", "TORCH_HOME",
              "XDG_CACHE_HOME", "TMPDIR")


def test_caches_and_temp_dirs_are_private_to_the_session():
    for var in CACHE_VARS:
        assert Path(os.environ[var]).is_relative_to(SESSION_DIR), var
    assert Path(tempfile.gettempdir()).is_relative_to(SESSION_DIR)
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_huggingface_hub_was_imported_after_the_isolation():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    assert Path(constants.HF_HUB_CACHE).is_relative_to(SESSION_DIR)


def test_isolation_overrides_the_outer_environment(tmp_path):
    """An outer HF_HUB_OFFLINE=0 / HF_HOME does not leak into the session (setdefault would let it)."""
    code = ("import os, hermetic; d = hermetic.isolate_environment(); import huggingface_hub.constants as c; "
            "print(c.HF_HUB_OFFLINE, c.HF_HUB_CACHE.startswith(str(d)), os.environ['TRANSFORMERS_OFFLINE'])")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "outer"),
           "HF_HUB_CACHE": str(tmp_path / "outer"), "HUGGINGFACE_HUB_CACHE": str(tmp_path / "outer"),
           "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "1"]


def test_child_processes_inherit_the_isolation_and_get_no_network():
    code = ("import os, urllib.request\nprint(os.environ['HF_HOME'])\n"
            "try:\n    urllib.request.urlopen('http://example.com', timeout=5)\nexcept OSError as e:\n  "
            "  print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [os.environ["HF_HOME"], "refused"]


def test_a_connection_beyond_loopback_raises_and_fails_the_test():
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed
    try:  # a library that swallows the error does not hide the attempt
        socket.create_connection(("huggingface.co", 443), timeout=1)
    except Exception:  # noqa: BLE001 - deliberately swallowed
        pass
    assert ("192.0.2.1", 80) in blocked_connections and ("huggingface.co", 443) in blocked_connections
    with pytest.raises(pytest.fail.Exception, match="tried to reach the network"):
        fail_if_blocked()
    assert not blocked_connections


def test_loopback_and_unix_sockets_still_work(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
