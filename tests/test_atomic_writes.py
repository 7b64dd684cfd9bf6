"""Every file the pipeline writes is written atomically (medmix/store/atomic.py).

The source of medmix/, extractors/ and workflow/scripts/ is scanned: a call that writes a file
(``open`` for writing, ``write_text``, ``to_parquet``, ``np.save``, ``json.dump``, ...) must sit
lexically inside ``with atomic_path(...)`` or ``with atomic_dir(...)``, unless listed in
:data:`ALLOWED` with the reason.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from medmix.store.atomic import atomic_dir

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("medmix", "extractors", "workflow/scripts")

#: Methods whose call writes a file, whatever the receiver.
WRITE_METHODS = {
    "write_text", "write_bytes", "to_parquet", "to_csv", "to_json", "to_feather", "to_pickle", "save_file",
    "savez", "savez_compressed", "write_table", "write_index", "savefig", "save_pretrained", "save_as",
}
#: ``module.fn`` calls that write a file.
WRITE_FUNCTIONS = {
    ("json", "dump"), ("yaml", "dump"), ("yaml", "safe_dump"), ("pickle", "dump"), ("torch", "save"),
    ("np", "save"), ("numpy", "save"), ("nib", "save"), ("nibabel", "save"), ("shutil", "copy"),
    ("shutil", "copy2"), ("shutil", "copyfile"), ("shutil", "copytree"), ("shutil", "move"),
}
ATOMIC_CONTEXTS = {"atomic_path", "atomic_dir"}

#: (path, source text of the call) -> why it may stay outside an atomic block.
ALLOWED = {
    ("extractors/moirai_worker.py", "np.savez(fh, sample_ids=sample_ids, embeddings=emb)"):
        "runs in the MOIRAI environment without medmix; the same temp/fsync/read-back/os.replace inline",
    ("medmix/pipeline/fit.py", "model.save(out_model)"): "Method.save writes each file with atomic_path",
    ("medmix/pipeline/fit.py", "scaler.save(Path(out_model) / SCALER_FILE)"): "Standardizer.save uses atomic_path",
    ("medmix/pipeline/__init__.py", 'logging.FileHandler(path, mode="w")'): "a log file, appended as it runs",
    ("medmix/plan/init_config.py", "yaml.safe_dump(overlay, sort_keys=False, default_flow_style=None, width=110)"):
        "dumps to a string (no stream); the CLI writes the file with write_text_atomic",
    ("extractors/fetch.py", 'open(partial, "ab")'): "a resumable download appends to its `.incomplete` blob "
        "(that is how it resumes); the blob is sha256-checked and os.replace'd into place only when complete",
    ("medmix/pipeline/cpu_slots.py", 'open(path, "a+")'): "an empty lock file opened for flock; nothing is written",
    ("medmix/pipeline/cpu_slots.py", 'open(folder / "gate.lock", "a+")'):
        "an empty lock file opened for flock; nothing is written",
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _open_mode(call: ast.Call) -> str:
    """The mode of ``open(path, mode)`` / ``path.open(mode)`` (``"r"`` if not a constant)."""
    is_method = isinstance(call.func, ast.Attribute)
    args = call.args[0:] if is_method else call.args[1:]
    mode = args[0] if args else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else "r"


def is_write(call: ast.Call) -> bool:
    func = call.func
    if _name(func) == "open" and not (isinstance(func, ast.Attribute) and _name(func.value) in {"Image", "zip"}):
        return any(c in _open_mode(call) for c in "wax+")
    if isinstance(func, ast.Attribute):
        if func.attr in {"to_json", "to_csv"} and not call.args and not call.keywords:
            return False  # no path: returns the text
        if func.attr in WRITE_METHODS:
            return True
        if (_name(func.value), func.attr) in WRITE_FUNCTIONS:
            return True
        if func.attr == "save" or (func.attr == "FileHandler"):
            return True  # Image.save, a model's save, ...: must be atomic or allowed by name
    return False


def non_atomic_writes(source: str, rel: str) -> list[str]:
    """``rel:line: call`` for every write call not inside an atomic ``with`` block."""
    found: list[str] = []

    def visit(node: ast.AST, atomic: bool) -> None:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            if any(isinstance(i.context_expr, ast.Call) and _name(i.context_expr.func) in ATOMIC_CONTEXTS
                   for i in node.items):
                atomic = True
        if isinstance(node, ast.Call) and not atomic and is_write(node):
            text = ast.get_source_segment(source, node) or ""
            if (rel, text) not in ALLOWED:
                found.append(f"{rel}:{node.lineno}: {text}")
        for child in ast.iter_child_nodes(node):
            visit(child, atomic)

    visit(ast.parse(source), False)
    return found


def _sources() -> list[Path]:
    files = []
    for top in SCANNED:
        files += sorted((REPO / top).rglob("*.py"))
    return [f for f in files if f.relative_to(REPO).as_posix() != "medmix/store/atomic.py"]


def test_every_pipeline_write_is_atomic() -> None:
    files = _sources()
    assert len(files) > 50  # the scan really covers the packages
    found = [hit for f in files for hit in non_atomic_writes(f.read_text(), f.relative_to(REPO).as_posix())]
    assert not found, "non-atomic file writes (use medmix.store.atomic):\n" + "\n".join(found)


def test_allow_list_entries_still_exist() -> None:
    for rel, text in ALLOWED:
        assert text in (REPO / rel).read_text(), f"stale allow-list entry {rel}: {text}"


def test_scanner_finds_the_write_forms_it_guards() -> None:
    snippet = '''
import json, numpy as np
from pathlib import Path
def bad(p, obj, df, im):
    Path(p).write_text("x")
    with open(p, "w") as fh:
        json.dump(obj, fh)
    np.save(p, obj)
    df.to_parquet(p)
    im.save(p)
    Path(p).open("ab")
def good(p, obj, df):
    with open(p) as fh:
        fh.read()
    with atomic_path(p) as tmp:
        df.to_csv(tmp)
        with open(tmp, "wb") as fh:
            np.save(fh, obj)
    with atomic_dir(p) as d:
        (d / "a.json").write_text("{}")
'''
    found = non_atomic_writes(snippet, "x.py")
    assert [hit.split(":")[1] for hit in found] == ["5", "6", "7", "8", "9", "10", "11"]


def test_atomic_dir_swaps_a_whole_folder_or_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "index"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "a.txt").write_text("two")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "one" and sorted(os.listdir(tmp_path)) == ["index"]
    with atomic_dir(target) as d:
        (d / "b.txt").write_text("three")
    assert sorted(os.listdir(target)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["index"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)  # usual folder mode, not mkdtemp's
