"""Path rules shared by the dataset adapters: config paths and cells that must stay inside a root."""

from __future__ import annotations

from pathlib import Path

from medmix.cohort import CohortError


def config_path(base_dir: Path, value: str | Path) -> Path:
    """A path from the config: absolute as given, relative ones against ``base_dir``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def resolve_inside(root: Path, cell: str, where: str) -> Path:
    """Resolve ``cell`` (relative to ``root``, or absolute) and refuse anything outside ``root``.

    Symbolic links are followed before the check, so a link pointing out of the folder is refused
    just like ``../`` or an absolute path elsewhere. ``where`` names the row for the error message.
    """
    root = Path(root).resolve()
    path = (root / cell).resolve()
    if path != root and root not in path.parents:
        raise CohortError(f"{where}: path {cell!r} resolves to {path}, outside the data folder {root}")
    return path
