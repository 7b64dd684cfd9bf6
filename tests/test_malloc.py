"""medmix.pipeline.malloc: a job's large temporaries come from the heap (no fresh mmap per block)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, os, sys
import numpy as np
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    sys.exit(3)
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    from medmix.pipeline.malloc import tune_malloc
    print("tuned", tune_malloc())
before = libc.mallinfo2().hblks
block = np.ones((4 << 20) // 8)  # 4 MiB: above glibc's starting mmap threshold (128 KiB)
print("mmapped", libc.mallinfo2().hblks - before)
"""


def _probe(mode: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode == 3:
        pytest.skip("this C library has no mallinfo2 (glibc >= 2.33)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_process_serves_a_4_mib_block_from_the_heap() -> None:
    assert "mmapped 1" in _probe("plain")  # glibc's default: a fresh mmap
    out = _probe("tuned")
    assert "tuned True" in out and "mmapped 0" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_users_own_malloc_setting_is_left_alone() -> None:
    import os

    out = _probe("tuned", {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert "tuned False" in out and "mmapped 1" in out
