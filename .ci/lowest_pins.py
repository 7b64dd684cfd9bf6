"""Print ``name==minimum`` for every core dependency of pyproject.toml that declares a ``>=`` minimum
(or an exact ``==`` version).

Used by ``.ci/lowest`` as a pip constraints file: the direct dependencies at their declared
minimums, everything they pull in at the newest compatible release (lowest-direct resolution).
A dependency without a minimum is left out (pip picks its newest release); an exact pin is repeated.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
MINIMUM = re.compile(r"(?:>=|==)\s*([^,;\s]+)")


def pins(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for dep in deps:
        match = REQUIREMENT.match(dep)
        if match is None:
            raise SystemExit(f"{pyproject}: cannot read the dependency {dep!r}")
        name, spec = match.groups()
        minimum = MINIMUM.search(spec)
        if minimum:
            out.append(f"{name}=={minimum.group(1)}")
    return out


if __name__ == "__main__":
    print("\n".join(pins(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
