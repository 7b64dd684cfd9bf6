"""README.md is the front door: short, with the two set-up commands CI uses, and every relative
link in it and in docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: The install-and-run and install-and-test commands, verbatim (.ci/run follows them).
SETUP_COMMANDS = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e . && snakemake --cores 8 all',
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && python -m pytest -q',
)
MAX_README_LINES = 200
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and code spans (their brackets are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`+[^`\n]*`+", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_keep_headings(path.read_text()):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _prose_keep_headings(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_readme_has_the_setup_commands_verbatim():
    text = README.read_text()
    for command in SETUP_COMMANDS:
        assert f"```bash\n{command}\n```" in text, f"README.md lacks the set-up command block:\n{command}"


def test_docs_exist_and_the_readme_links_them():
    text = README.read_text()
    docs = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert "configuration.md" in docs
    missing = [name for name in docs if f"(docs/{name})" not in text]
    assert not missing, f"README.md's contents do not link {missing}"


def test_every_relative_link_leads_to_a_file_and_heading():
    broken = []
    for page in _pages():
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_methods_table_matches_docs_methods():
    """The README's method rows are docs/methods.md's, so that the two tables cannot drift apart."""
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    methods = (REPO / "docs" / "methods.md").read_text()
    assert any("`medmix_stacked` †" in r for r in rows)
    stale = [r.split("|")[1].strip() for r in rows if r not in methods]
    assert not stale, f"README.md method rows differ from docs/methods.md: {stale}"
