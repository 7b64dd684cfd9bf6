"""The two stages and their one door: the declared import contracts hold and are complete."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

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
WORKFLOW_LAYER = {"medmix.config", "medmix.cli", "medmix.overlay", "medmix.init_config"}
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
    stage1_rule, stage2_rule, store_rule = _contracts()
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
