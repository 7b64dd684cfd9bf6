"""The two stages and their one door: the declared import contracts hold and are complete."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from extractors.registry import expert_module, list_experts
from medmix.code_closure import (
    NOT_OUTPUT_AFFECTING,
    _imported_names,
    _module_file,
    closure_files,
    module_closure,
)

REPO = Path(__file__).resolve().parents[1]
#: medmix modules that may know both stages (the workflow layer) and the shared door.
WORKFLOW_LAYER = {"medmix.config", "medmix.cli", "medmix.overlay", "medmix.init_config", "medmix.cache_report"}
DOOR = "medmix.store"


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _top_level_medmix() -> set[str]:
    out = set()
    for path in (REPO / "medmix").iterdir():
        if path.name.startswith(("_", ".")):
            continue
        if path.suffix == ".py" or (path / "__init__.py").is_file():
            out.add(f"medmix.{path.stem}")
    return out


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    proc = subprocess.run([exe, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_contracts_cover_every_medmix_module():
    """A new medmix module must be placed on one side: the contracts list modules explicitly."""
    stage1_rule, stage2_rule, store_rule = [c for c in _contracts() if c["type"] == "forbidden"]
    fusion = _top_level_medmix() - WORKFLOW_LAYER - {DOOR}
    assert set(stage1_rule["forbidden_modules"]) == fusion | WORKFLOW_LAYER
    assert set(stage2_rule["source_modules"]) == fusion | {DOOR}
    assert set(store_rule["forbidden_modules"]) == fusion | WORKFLOW_LAYER | {"extractors"}


def test_a_violation_is_caught(tmp_path):
    """The checker is live: a stage-1 module importing the cohort table breaks the contract."""
    fake = tmp_path / "proj"
    shutil.copytree(REPO / "medmix", fake / "medmix", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "extractors", fake / "extractors", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", fake / "pyproject.toml")
    (fake / "extractors" / "leak.py").write_text("from medmix.cohort import read_cohort\n")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    proc = subprocess.run([exe, "--config", str(fake / "pyproject.toml")], cwd=fake, capture_output=True, text=True,
                          env={"PYTHONPATH": str(fake), "PATH": str(Path(sys.executable).parent)})
    assert proc.returncode != 0 and "extractors.leak" in proc.stdout


def test_layers_cover_every_medmix_package_and_catch_an_import_running_back_up(tmp_path):
    """The layers contract places every top-level medmix package (exhaustive) and fails when a lower
    package imports a higher one (here: the trainer importing the table jobs)."""
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    placed = {f"medmix.{part.strip()}" for layer in layers["layers"] for part in layer.split("|")}
    assert placed == _top_level_medmix(), placed ^ _top_level_medmix()
    fake = tmp_path / "proj"
    shutil.copytree(REPO / "medmix", fake / "medmix", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "extractors", fake / "extractors", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", fake / "pyproject.toml")
    (fake / "medmix" / "training" / "upward.py").write_text("from medmix.evaluation import tables\n")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    proc = subprocess.run([exe, "--config", str(fake / "pyproject.toml")], cwd=fake, capture_output=True, text=True,
                          env={"PYTHONPATH": str(fake), "PATH": str(Path(sys.executable).parent)})
    assert proc.returncode != 0 and "medmix.training.upward" in proc.stdout, proc.stdout[-2000:]


def _cycles(package: str) -> list[list[str]]:
    """Strongly connected components (size > 1) of the module import graph; grimp reads every import
    statement, those under ``if TYPE_CHECKING:`` and inside functions included."""
    import grimp

    graph = grimp.build_graph(package, include_external_packages=False)
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in adj:
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("package", ["medmix", "extractors"])
def test_no_import_cycle_among_modules(package):
    assert _cycles(package) == []


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "cyclic_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclic_pkg import b\n")
    (pkg / "b.py").write_text("import cyclic_pkg.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles("cyclic_pkg") == [["cyclic_pkg.a", "cyclic_pkg.b"]]


def test_no_expert_imports_another_expert():
    modules = {expert_module(name) for name in list_experts()}
    offenders = []
    for module in sorted(modules):
        for imported in _imported_names(_module_file(module), module):
            if imported in modules - {module}:
                offenders.append(f"{module} imports {imported}")
    assert not offenders, "shared code belongs in helper modules: " + "; ".join(offenders)


def test_closure_follows_helpers_and_lazy_imports():
    closure = module_closure("extractors.image_texture")
    assert {"extractors.image_grey", "extractors.texture_features", "extractors.inputs", "extractors.base"} <= set(closure)
    assert "extractors.image_intensity" not in closure  # a sibling expert, not a dependency
    # rag_medcpt imports the knowledge helpers inside functions only
    assert "extractors.knowledge.index" in module_closure("extractors.rag_medcpt")
    assert not set(module_closure("extractors.minilm")) & set(NOT_OUTPUT_AFFECTING)
    files = closure_files("medmix.methods.medmix")
    assert str(REPO / "medmix" / "training" / "trainer.py") in files


def test_every_exclusion_is_a_real_module_with_a_reason():
    for module, reason in NOT_OUTPUT_AFFECTING.items():
        assert _module_file(module) is not None, module
        assert len(reason) > 30, module
    # excluded modules are neither in a closure nor followed: of what the extraction job imports, the
    # registry, the runner and the input-view reader are left out; the expert base class (device
    # choice) and the shard assignment (which samples a part holds) stay in
    assert module_closure("extractors.job") == (
        "extractors", "extractors.base", "extractors.job", "medmix", "medmix.store.shards")
