"""Atomic file writes: temp file in the same folder, fsync, verify, ``os.replace``.

Every file the pipeline writes goes through :func:`atomic_path` (one file), :func:`atomic_dir`
(a folder built as a whole: the demo cohorts, the retrieval index) or the ``write_*_atomic``
shorthands; ``tests/test_atomic_writes.py`` scans the source for writes outside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


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


def write_text_atomic(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """``target`` holds ``text`` (written atomically)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json_atomic(target: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """``target`` holds ``json.dumps(obj, **dumps_kwargs)`` and a final newline (written atomically)."""
    write_text_atomic(target, json.dumps(obj, **dumps_kwargs) + "\n")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (deepest first), under ``root``."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success fsync it and swap it into place.

    The folder is built as a whole and renamed over ``target`` (an existing ``target`` is moved
    aside first and removed afterwards), so a reader sees the old folder or the complete new one,
    never a half-written one. On any error the temporary folder is removed and ``target`` is kept.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmpdir"):  # left by a killed earlier attempt
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmpdir", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700; give the usual folder mode
    try:
        yield tmp
        _fsync_tree(tmp)
        backup = None
        if target.exists() or target.is_symlink():
            backup = target.parent / f".{target.name}.{os.getpid()}.old"
            os.replace(target, backup)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if backup is not None:
            if backup.is_dir() and not backup.is_symlink():
                shutil.rmtree(backup, ignore_errors=True)
            else:
                backup.unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
