"""Atomic file writes: temp file in the same folder, fsync, verify, ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success fsync, verify and rename it into place.

    On any error the temporary file is removed and ``target`` is left untouched, so a reader
    never sees a partial file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One writer per target: temp files left by a killed earlier attempt are stale.
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
