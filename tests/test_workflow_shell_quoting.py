"""Config values never reach a shell unquoted: every ``shell:`` placeholder is ``:q``-quoted.

workflow/rules/*.smk and the Snakefile are scanned for ``shell:`` directives; each ``{...}``
placeholder must carry Snakemake's ``:q`` (shlex quoting) unless listed in :data:`PRE_QUOTED`.
A dry run then renders the MOIRAI worker's command with a hostile device string.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from workflow_helpers import REPO, snakemake

#: Placeholders whose value is already a shell-quoted string (built with shlex.quote).
PRE_QUOTED = {"params.identity": "moirai_identity_args() joins shlex.quote()d arguments (common.smk)"}

_SHELL = re.compile(r"^(\s*)shell:\s*\n((?:\1\s+.*\n|\s*\n)+)", re.MULTILINE)


def shell_placeholders(text: str) -> list[str]:
    """Every ``{...}`` placeholder in the ``shell:`` directives of one rules file."""
    found = []
    for match in _SHELL.finditer(text):
        block = "".join(line.split("#", 1)[0] for line in match.group(2).splitlines(True))
        for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', block):
            found += re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", literal)
    return found


def test_every_shell_placeholder_is_quoted() -> None:
    files = sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]
    seen, bad = [], []
    for f in files:
        for ph in shell_placeholders(f.read_text()):
            seen.append(ph)
            if not ph.endswith(":q") and ph not in PRE_QUOTED:
                bad.append(f"{f.relative_to(REPO)}: {{{ph}}}")
    assert "resources.device:q" in seen  # the scan reaches the MOIRAI rule
    assert not bad, "unquoted shell placeholders (use {x:q}):\n" + "\n".join(bad)


def test_scanner_sees_unquoted_placeholders() -> None:
    rules = 'rule a:\n    shell:\n        "run {input.x:q} --d {resources.device}"\n        " > {log:q}"\n'
    assert shell_placeholders(rules) == ["input.x:q", "resources.device", "log:q"]


def test_hostile_device_string_stays_one_argument(tmp_path: Path) -> None:
    """Dry run of the paper profile: the worker command keeps the device as one quoted word."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["experts"]["profile"] = "paper"
    hostile = "cpu; touch PWNED #"
    cfg["experts"].setdefault("settings", {}).setdefault("moirai", {})["device"] = hostile
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--until", "moirai_embed")
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "moirai_worker.py" in ln
             and "--device" in ln]
    assert lines, out.stdout[-2000:]
    for line in lines:
        words = shlex.split(line)
        assert words[words.index("--device") + 1] == hostile and "touch" not in words
    assert not (tmp_path / "PWNED").exists()
