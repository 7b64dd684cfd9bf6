"""The two stages and their one door: the declared import contracts hold and are complete."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from extractors.registry import expert_module, list_experts
from medmix.plan.code_closure import (
    NOT_OUTPUT_AFFECTING,
    _imported_names,
    _module_file,
    closure_files,
    module_closure,
)

REPO = Path(__file__).resolve().parents[1]
#: medmix modules that may know both stages (the workflow layer) and the shared door.
WORKFLOW_LAYER = {"medmix.plan", "medmix.cli"}
DOOR = "medmix.store"


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _children(package: str) -> set[str]:
    """The modules and sub-packages directly inside ``package`` (e.g. ``medmix``)."""
    out = set()
    for path in (REPO / package.replace(".", "/")).iterdir():
        if path.name.startswith(("_", ".")):
            continue
        if path.suffix == ".py" or (path / "__init__.py").is_file():
            out.add(f"{package}.{path.stem}")
    return out


def _top_level_medmix() -> set[str]:
    return _children("medmix")


def _layers(container: str) -> list[str]:
    (contract,) = [c for c in _contracts() if c["type"] == "layers" and c["containers"] == [container]]
    return contract["layers"]


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


@pytest.mark.parametrize("container", ["medmix", "medmix.plan"])
def test_layers_place_every_module(container):
    """Each layers contract places every module and package of its container (exhaustive)."""
    placed = {f"{container}.{part.strip()}" for layer in _layers(container) for part in layer.split("|")}
    assert placed == _children(container), placed ^ _children(container)


@pytest.mark.parametrize(("where", "upward"), [
    ("medmix/training/upward.py", "from medmix.evaluation import tables\n"),  # the trainer -> the table jobs
    ("medmix/pipeline/upward.py", "from medmix.plan import runs\n"),  # a job body -> the workflow layer
    ("medmix/plan/upward_sweep.py", "from medmix.plan import config\n"),  # inside the workflow layer
])
def test_an_import_running_back_up_fails(tmp_path, where, upward):
    fake = tmp_path / "proj"
    shutil.copytree(REPO / "medmix", fake / "medmix", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "extractors", fake / "extractors", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", fake / "pyproject.toml")
    (fake / where).write_text(upward)
    if where.startswith("medmix/plan/"):  # placed on the lowest level of the workflow layer
        text = (fake / "pyproject.toml").read_text()
        placed = text.replace('"sweep | missing_grid | code_closure | schema"',
                              '"sweep | missing_grid | code_closure | schema | upward_sweep"')
        (fake / "pyproject.toml").write_text(placed)
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    proc = subprocess.run([exe, "--config", str(fake / "pyproject.toml")], cwd=fake, capture_output=True, text=True,
                          env={"PYTHONPATH": str(fake), "PATH": str(Path(sys.executable).parent)})
    module = where.removesuffix(".py").replace("/", ".")
    assert proc.returncode != 0 and module in proc.stdout, proc.stdout[-2000:]


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


def test_the_experts_package_holds_exactly_the_registering_modules():
    """Every module of ``extractors/experts/`` registers an expert and no module elsewhere does;
    enumerating them all (discovery) loads no heavy library (each expert imports its own lazily)."""
    import pkgutil

    from extractors import experts

    modules = {f"extractors.experts.{info.name}" for info in pkgutil.iter_modules(experts.__path__)}
    assert {expert_module(name) for name in list_experts()} == modules
    heavy = ("torch", "transformers", "open_clip", "chronos", "timm", "sentence_transformers", "faiss", "nibabel",
             "pydicom")
    code = ("import sys\nfrom extractors.registry import list_experts\nassert len(list_experts()) > 20\n"
            f"print(sorted(k for k in {heavy!r} if k in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_closure_follows_helpers_and_lazy_imports():
    closure = module_closure("extractors.experts.image_texture")
    assert {"extractors.image_grey", "extractors.texture_features", "extractors.inputs",
            "extractors.base"} <= set(closure)
    assert "extractors.experts.image_intensity" not in closure  # a sibling expert, not a dependency
    # rag_medcpt imports the knowledge helpers inside functions only
    assert "extractors.knowledge.index" in module_closure("extractors.experts.rag_medcpt")
    assert not set(module_closure("extractors.experts.minilm")) & set(NOT_OUTPUT_AFFECTING)
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


def test_no_test_module_imports_another():
    """Test helpers live in helper modules (tests/*_helpers.py, tests/tiny_text_models.py, …), never in a test."""
    import ast

    offenders = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            offenders += [f"{path.name} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not offenders, offenders
