"""glibc ``malloc`` thresholds for job processes: large temporaries from the heap, not fresh mmaps.

glibc serves an allocation above its mmap threshold (128 KiB at start) with a fresh ``mmap``,
whose pages fault in zero-filled on first touch, and gives it back to the kernel on ``free``. The
threshold adapts to the sizes a process frees, so whether the large numpy temporaries of a
weight-free expert (a batch of images through a dozen array operations, hundreds of KiB each,
allocated and freed per operation) come from the heap or from fresh mmaps depends on the process's
allocation history: the same ``image_texture`` embed of 1,500 images took 0.54 s in one process
and 1.22 s in the next, and a demo ``image_texture`` job's extraction 0.79 s instead of 0.58 s.
Fixed thresholds (the heap for blocks up to :data:`MMAP_THRESHOLD`, free heap memory kept up to
:data:`TRIM_THRESHOLD`) give the fast case every time; at most that much freed memory stays with
the process instead of going back to the kernel at once. The extraction jobs set them.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (glibc's own ceiling for its adaptive threshold).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the heap's top kept for reuse before it is returned to the kernel.
TRIM_THRESHOLD = 128 << 20
#: Environment variables by which a user sets the thresholds (then left as they are).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (and the processes it forks).

    False, changing nothing, off Linux/glibc or where the user set either threshold."""
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
