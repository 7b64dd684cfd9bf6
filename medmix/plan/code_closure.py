"""The repository modules a job's output depends on: the closure of its imports.

A rule's code inputs are computed, not hand-kept: starting from a module (an expert's, a fusion
method's, a job body's), every ``import`` / ``from ... import`` anywhere in its source (top level
or inside functions, since experts import lazily) that names a module of this repository is
followed, together with the ``__init__.py`` of every package on the way. Editing any file of the
closure reruns the rule; editing a file outside it does not.

:data:`NOT_OUTPUT_AFFECTING` lists the only modules left out on purpose, each with its reason:
plumbing that moves data around but cannot change a value written.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Top-level packages of this repository that closures follow.
PACKAGES = ("medmix", "extractors")

#: Modules excluded from every closure (and not followed), with the reason each cannot change an output.
NOT_OUTPUT_AFFECTING: dict[str, str] = {
    "extractors.runner": "batching, prefetching, progress and failure counting; each expert guarantees "
    "embeddings independent of batch composition (tested per expert), and failure policy is enforced, not written",
    "extractors.registry": "name -> class lookup; identity fields that reach the cache (model id, revision, "
    "preprocessing) are rule params already",
    "extractors.spec": "the ExpertSpec record type and its vocabulary checks; the values an expert declares live "
    "in its own module, and those that reach the cache (model id, revision, preprocessing) are rule params already",
    "extractors.costs": "parameter / FLOP counts an expert declares for the efficiency table (ExpertSpec "
    "cost fields); never reaches an embedding",
    "medmix.store": "the feature-store writer/reader: stores the values it is given (verified on read-back)",
    "medmix.store.atomic": "temp file + fsync + rename; never changes the bytes written",
    "medmix.store.inputs": "reads the input view and fingerprints it; the fingerprint is a rule param already",
}


def _module_file(name: str, root: Path = REPO) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported_names(path: Path, module: str) -> set[str]:
    """Fully qualified names every import statement of ``path`` may refer to (modules or attributes)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if _is_package(path) else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str) -> list[str]:
    """Repository modules that importing ``name`` executes: the module and its parent packages."""
    parts = name.split(".")
    found = []
    for i in range(1, len(parts) + 1):
        candidate = ".".join(parts[:i])
        if _module_file(candidate) is None:
            break
        found.append(candidate)
    return found


@cache
def module_closure(module: str) -> tuple[str, ...]:
    """Sorted module names ``module`` depends on (itself included; exclusions left out)."""
    if _module_file(module) is None:
        raise ModuleNotFoundError(f"{module!r} is not a module of this repository ({', '.join(PACKAGES)})")
    seen: set[str] = set()
    stack = [m for m in _resolve(module)]
    while stack:
        name = stack.pop()
        if name in seen or name in NOT_OUTPUT_AFFECTING:
            continue
        seen.add(name)
        path = _module_file(name)
        for imported in _imported_names(path, name):
            stack.extend(m for m in _resolve(imported) if m not in seen)
    return tuple(sorted(seen))


def closure_files(*modules: str) -> list[str]:
    """Absolute source files of the union of the modules' closures (rule inputs)."""
    return list(_closure_files(modules))


@cache
def _closure_files(modules: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({str(_module_file(m)) for mod in modules for m in module_closure(mod)}))
