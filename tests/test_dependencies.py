"""pyproject.toml declares exactly what the code imports.

Every third-party top-level import of the package (medmix/, extractors/, workflow scripts and
rules) is a declared dependency (core or an optional extra), every import of the tests is declared
(core, extras or ``dev``), and every declared dependency is imported somewhere, except the
documented exceptions below. Import names map to distributions through
``importlib.metadata.packages_distributions()`` (installed packages) or ``NOT_INSTALLED`` (extras
this environment may lack).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN = {"medmix", "extractors"}
PACKAGE_SOURCES = ("medmix", "extractors", "workflow")
#: Imported, deliberately not declared: the MOIRAI worker runs in its own environment (workflow/envs/moirai.yaml).
UNDECLARED_IMPORTS = {"uni2ts": "workflow/envs/moirai.yaml"}
#: Declared, not imported by our code.
NOT_IMPORTED = {
    "timm": "version floor of the library open_clip builds BiomedCLIP's vision tower with "
            "(extractors/experts/biomedclip.py)",
    "pylibjpeg": "pydicom pixel-data plugin (JPEG decoders; pydicom finds it, extractors/inputs.py)",
    "pylibjpeg-libjpeg": "pylibjpeg plugin: JPEG lossless / baseline / extended and JPEG-LS decoding",
    "pylibjpeg-openjpeg": "pylibjpeg plugin: JPEG 2000 decoding",
    "pyjpegls": "pydicom JPEG-LS plugin (dev; declared with the DICOM reader work, never imported)",
    "ruff": "lint command line (README: Development)",
    "import-linter": "`lint-imports` command line (tests/test_layering.py)",
    "pytest-timeout": "pytest plugin, loaded by pytest itself (the `timeout` option in pyproject.toml)",
    "snakemake-executor-plugin-slurm": "Snakemake executor plugin, loaded by name (`--executor slurm`, profile slurm)",
    "snakemake-executor-plugin-kubernetes": "Snakemake executor plugin, loaded by name (profile kubernetes)",
    "snakemake-executor-plugin-cluster-generic": "Snakemake executor plugin, loaded by name (tests/test_scale.py)",
    "snakemake-storage-plugin-fs": "Snakemake storage plugin, loaded by name (profile kubernetes' shared volume)",
    "tabulate": "pandas' DataFrame.to_markdown imports it (medmix/table_text.py)",
    "jinja2": "pandas' Styler.to_latex imports it (medmix/table_text.py)",
}
#: Import name -> distribution for optional packages that may be absent here (e.g. the lowest-versions venv).
NOT_INSTALLED = {"merlin": "merlin-vlm", "chronos": "chronos-forecasting", "einops": "einops", "grimp": "grimp"}
#: Modules the tests import from the tests folder itself.
TEST_HELPERS = {p.stem for p in (REPO / "tests").rglob("*.py")}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1))


def declared() -> dict[str, set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"core": {requirement_name(d) for d in project["dependencies"]}}
    groups.update({g: {requirement_name(d) for d in deps} for g, deps in project["optional-dependencies"].items()})
    return groups


def imports_of(paths) -> dict[str, set[str]]:
    """Top-level absolute imports -> files that import them (Python files and Snakemake rules)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        text = path.read_text()
        if path.suffix == ".py":
            names = set()
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
        else:  # Snakefile / *.smk: Python import lines
            lines = re.findall(r"^\s*(?:from\s+([A-Za-z_]\w*)[\w.]*\s+import\s|import\s+([A-Za-z_]\w*))", text,
                               flags=re.M)
            names = {a or b for a, b in lines}
        for name in names:
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return {n: f for n, f in found.items() if n not in sys.stdlib_module_names and n not in OWN and n != "__future__"}


def package_files():
    files = [p for d in PACKAGE_SOURCES for p in (REPO / d).rglob("*.py")]
    return files + list((REPO / "workflow").rglob("*.smk")) + [REPO / "Snakefile"]


@functools.cache
def installed() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions(module: str) -> set[str]:
    dists = {normalize(d) for d in installed().get(module, [])}
    if not dists and module in NOT_INSTALLED:
        dists = {normalize(NOT_INSTALLED[module])}
    return dists


def test_the_scan_sees_known_imports():
    found = imports_of(package_files())
    assert {"torch", "pyarrow", "huggingface_hub", "snakemake"} <= set(found)
    assert "extractors/hf_common.py" in found["huggingface_hub"]


def test_every_package_import_is_declared():
    groups = declared()
    allowed = groups["core"] | groups.get("volume3d", set()) | groups.get("timeseries", set())
    problems = []
    for module, files in sorted(imports_of(package_files()).items()):
        if module in UNDECLARED_IMPORTS:
            continue
        dists = distributions(module)
        if not dists:
            problems.append(f"{module} (imported by {sorted(files)[:3]}) is not installed: cannot "
                            "tell its distribution")
        elif not dists & allowed:
            problems.append(f"{module} -> {sorted(dists)} (imported by {sorted(files)[:3]}) is not "
                            "declared in pyproject")
    assert not problems, "\n".join(problems)


def test_every_test_import_is_declared():
    groups = declared()
    allowed = set().union(*groups.values())
    problems = []
    for module, files in sorted(imports_of((REPO / "tests").rglob("*.py")).items()):
        if module in UNDECLARED_IMPORTS or module in TEST_HELPERS or module == "conftest":
            continue
        dists = distributions(module)
        if not dists & allowed:
            problems.append(f"{module} -> {sorted(dists) or '?'} (imported by {sorted(files)[:3]}) is not declared")
    assert not problems, "\n".join(problems)


def test_every_declared_dependency_is_imported():
    groups = declared()
    used = set()
    for module in imports_of([*package_files(), *(REPO / "tests").rglob("*.py")]):
        used |= distributions(module)
    unused = sorted(d for deps in groups.values() for d in deps if d not in used and d not in NOT_IMPORTED)
    assert not unused, f"declared in pyproject.toml but never imported (remove, or document in NOT_IMPORTED): {unused}"
