"""A hermetic test session: private caches and temp dirs, offline Hugging Face, no network.

:func:`isolate_environment` points every cache the libraries we use would read or fill
(Hugging Face hub / datasets / transformers, sentence-transformers, torch hub, XDG caches,
matplotlib) and the temp dir at a fresh per-session folder, and forces the offline switches
(``setdefault`` would let an outer ``HF_HUB_OFFLINE=0`` win). It changes ``os.environ``, so child
processes (Snakemake runs, workers) inherit it. They also get a proxy that refuses every
connection (``HTTP(S)_PROXY`` / ``ALL_PROXY`` at a closed local port, loopback exempt) and
``PIP_NO_INDEX``, so HTTP clients and pip in a child fail instead of reaching the network.

:func:`guard_network` patches :mod:`socket` in this process: a connection to anything but
loopback or a Unix socket, and a name lookup of another host, raise :class:`NetworkAccessError`
(not an ``OSError``, so that "offline? use the cache" fallbacks do not hide it) and are recorded
in :data:`blocked_connections`, which conftest's autouse fixture turns into a test failure. Raw
sockets opened by child processes are not patched (only their proxy settings apply).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

#: Refused connection attempts of the current test: (host, port).
blocked_connections: list[tuple[str, object]] = []
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there
LEGACY_CACHE_VARS = ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE",
                     "PYTORCH_PRETRAINED_BERT_CACHE")


class NetworkAccessError(RuntimeError):
    """A test tried to connect beyond this machine."""


def isolate_environment() -> Path:
    """Point caches and temp dirs at a new per-session folder and force offline mode; returns the folder."""
    session = Path(tempfile.mkdtemp(prefix="medmix-tests-"))
    dirs = {
        "HF_HOME": "hf", "HF_HUB_CACHE": "hf/hub", "HF_DATASETS_CACHE": "hf/datasets",
        "SENTENCE_TRANSFORMERS_HOME": "sentence-transformers",
        "TORCH_HOME": "torch", "XDG_CACHE_HOME": "xdg/cache", "XDG_CONFIG_HOME": "xdg/config",
        "XDG_DATA_HOME": "xdg/data", "MPLCONFIGDIR": "matplotlib", "TMPDIR": "tmp",
    }
    for var, sub in dirs.items():
        (session / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(session / sub)
    for legacy in LEGACY_CACHE_VARS:  # older names that would override the ones above
        os.environ.pop(legacy, None)
    os.environ.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "PIP_NO_INDEX": "1",
        "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "ALL_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY, "all_proxy": DEAD_PROXY,
        "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
    })
    tempfile.tempdir = None  # re-read TMPDIR
    import atexit

    atexit.register(shutil.rmtree, session, ignore_errors=True)
    return session


def is_local(address) -> bool:
    """Loopback hosts and Unix-socket paths are local."""
    if not isinstance(address, tuple):
        return True  # AF_UNIX path (str / bytes)
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost


def guard_network() -> None:
    """Make non-local ``connect`` / ``connect_ex`` in this process raise :class:`NetworkAccessError`."""
    if getattr(socket.socket, "_medmix_guarded", False):
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address) -> None:
        if not is_local(address):
            blocked_connections.append((str(address[0]), address[1] if len(address) > 1 else None))
            raise NetworkAccessError(f"test tried to connect to {address!r}: tests must not use the network")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    real_getaddrinfo = socket.getaddrinfo
    own_names = {socket.gethostname()}

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in own_names and not is_local((name, port)) and not _numeric(name):
            blocked_connections.append((name, port))
            raise NetworkAccessError(f"test tried to look up {name!r}: tests must not use the network")
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo = getaddrinfo
    socket.socket._medmix_guarded = True


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def fail_if_blocked() -> None:
    """Fail the current test if it tried to connect beyond this machine (then forget the attempts)."""
    if blocked_connections:
        import pytest

        tried = sorted(set(blocked_connections))
        blocked_connections.clear()
        pytest.fail(f"the test tried to reach the network: {tried} (tests must be hermetic; see tests/hermetic.py)")
