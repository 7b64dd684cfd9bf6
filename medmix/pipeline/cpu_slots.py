"""No more busy job threads than the machine has CPUs, whatever ``--cores`` says.

``snakemake --cores 8`` on a 2-CPU machine starts up to 8 one-thread jobs at once: they share
2 CPUs, each runs 4 times slower, and together they hold 4 times the memory. A job claims one
*CPU slot* per thread before its work starts (:func:`claim_cpus`, called by
:func:`medmix.pipeline.set_threads`) and holds it until its process exits; a job that finds no
free slot sleeps until one is free. So ``--cores 8`` then runs like ``--cores 2`` here, and keeps
its meaning on a machine with 8 CPUs or more.

A slot is an exclusive ``flock`` on one of ``os.cpu_count()`` files in a per-user, per-host
folder under the temporary directory: the kernel releases it when the process ends, however it
ends, so a killed job leaves no stale slot. Jobs of every run of this user on this host share the
slots (two runs at once do not oversubscribe either); jobs on other hosts of a cluster use their
host's own. ``MEDMIX_CPU_SLOTS=N`` sets the number of slots, ``0`` turns the limit off.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Environment variable: the number of slots (default: the host's CPU count; 0: no limit).
ENV = "MEDMIX_CPU_SLOTS"
#: Seconds between two attempts of a waiting job (with jitter).
POLL = 0.25

_held: list = []  # open slot files of this process (the locks live as long as they do)


def slot_count() -> int:
    """How many slots this host has (0: no limit)."""
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            count = int(value)
        except ValueError as err:
            raise ValueError(f"{ENV} must be a whole number of CPU slots (0: no limit), got {value!r}") from err
        if count < 0:
            raise ValueError(f"{ENV} must be >= 0, got {count}")
        return count
    return os.cpu_count() or 1


def slot_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"medmix-cpu-slots-{os.getuid()}" / socket.gethostname()


def _try_lock(path: Path):
    import fcntl

    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_cpus(threads: int) -> int:
    """Hold ``threads`` CPU slots (at most the host's number) for the rest of this process; wait
    while fewer are free. Returns the slots held (0 when the limit is off or unsupported).

    A one-slot job takes any free slot. A job that needs several first holds the host's *gate*
    (one such job at a time) and then keeps every slot it gets until it has them all, so freed
    slots cannot always go to one-slot jobs first, and two such jobs cannot each hold half."""
    import fcntl

    total = slot_count()
    if total == 0 or _held or os.name != "posix":
        return len(_held)
    want = max(1, min(int(threads), total))
    folder = slot_folder()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"slot{k}.lock" for k in range(total)]
    gate = None
    if want > 1:
        gate = open(folder / "gate.lock", "a+")  # noqa: SIM115 - closed below, which releases it
        fcntl.flock(gate, fcntl.LOCK_EX)
    start, announced = time.monotonic(), False
    try:
        while True:
            for path in random.sample(paths, len(paths)):  # random order: waiting jobs do not queue on slot 0
                if any(h.name == str(path) for h in _held):
                    continue
                handle = _try_lock(path)
                if handle is not None:
                    _held.append(handle)
                    if len(_held) == want:
                        waited = time.monotonic() - start
                        if waited >= 1.0:
                            log.info("waited %.0f s for %d of this host's %d CPU slots (%s)", waited, want, total, ENV)
                        return want
            if not announced:
                log.info("waiting for %d free CPU slot(s): the other jobs on this host use all %d (%s)", want, total,
                         ENV)
                announced = True
            time.sleep(POLL * (0.5 + random.random()))
    finally:
        if gate is not None:
            gate.close()
