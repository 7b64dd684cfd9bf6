"""Render ``docs/configuration.md`` from the configuration schema (``workflow/schemas/config.schema.yaml``).

Every key of the schema, nested ones by their dotted path (``training.lr``,
``datasets.<dataset>.modalities.<modality>.kind``), with its type, default and description. Keys
that only some datasets or modalities accept (the schema's ``if``/``then`` branches) say when they
apply. The page is generated, never edited by hand: ``tests/test_docs_config.py`` fails when
``docs/configuration.md`` differs from :func:`render`. Rewrite it with::

    python -m medmix.plan.docs_config --write

This module reads only the schema file and writes through the store's atomic writer (it imports no
other project module, so it sits on neither stage's side).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmix.plan.schema import config_schema
from medmix.store.atomic import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = REPO_ROOT / "docs" / "configuration.md"
WRITE_COMMAND = "python -m medmix.plan.docs_config --write"

#: The name shown for a key the user chooses (a mapping's entries), by the dotted path of the mapping.
PLACEHOLDERS = {
    "demo.cohorts": "<cohort>",
    "datasets": "<dataset>",
    "datasets.<dataset>.modalities": "<modality>",
    "experts.profiles": "<profile>",
    "experts.profiles.<profile>": "<kind>",
    "experts.settings": "<expert>",
    "method_params": "<method>",
    "variants": "<variant>",
    "protocols.train": "<protocol>",
    "protocols.test": "<protocol>",
    "resources": "<rule>",
    "extraction.experts": "<expert>",
}

INTRO = """\
`config.yaml` is validated against `workflow/schemas/config.schema.yaml` (defaults filled in)
when Snakemake loads it and by `medmix.plan.config.load_config`; an error names the offending key and
what was expected. Every block is closed: an unknown key (a typo such as `split_colum:`) is an
error that names where it is and the closest valid key, e.g.
``config key `datasets.iu.split_colum`: unknown key 'split_colum'; did you mean 'split_column'?``.
Which dataset keys are valid depends on the dataset's `adapter` (`definitions.adapter_*` in the
schema), and which modality keys on its `kind` (`definitions.modality`). Sections: `datasets`, `experts`
(profiles of per-kind committees with roles and an optional teacher; per-expert settings),
`training` (what every method reads; the paper's Appendix C values are the defaults: AdamW,
lr 1e-5, 50 warm-up epochs, ≤200 epochs, batch 256, patience 20), `methods` (run names:
registered methods and variants), `method_params` (per method: `training` overrides and the
method's own keys, e.g. MedMIX's router lr ×0.3, distillation ramp 0→0.3 over 30 epochs, λ_RKD
0.05 and read-out options), `variants`, `protocols` (train- and test-time missing-modality
protocols: `none`, `drop_one`, `random_drop`), `seeds`, `rag`, `resources` (per-rule overrides
for clusters; see `workflow/profiles/slurm/`).

A `--configfile` of your own is merged over `config.yaml` key by key (Snakemake's rule), so a
section you write as `{}` keeps the default's contents: to turn off the demo's modality sweep or
CP-IMoE grid, give them no methods (`sweep: {methods: []}`, `missing_grid: {methods: []}`); a
sweep or grid without methods is off and its other keys are not checked.

Run variants, the modality sweep and the CP-IMoE grid are described in [methods.md](methods.md);
the per-rule resources and sharding in [scale-out.md](scale-out.md); dataset keys in
[datasets.md](datasets.md) and [the manifest contract](../medmix/datasets/README.md).
"""


@dataclass
class Row:
    path: str
    type: str
    default: str
    description: str
    when: list[str]


def load_schema() -> dict[str, Any]:
    """The schema the workflow validates against (the registered adapters' own keys included)."""
    return config_schema()


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` (``#/...``) merged in; the node's own keys win."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _text(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value)).strip()


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _has_keys(node: dict[str, Any], root: dict[str, Any]) -> bool:
    """Whether ``node`` (resolved) declares keys of its own: properties, ``allOf`` parts or a mapping of such."""
    node = _resolve(node, root)
    values = node.get("additionalProperties")
    return any(k in node for k in ("properties", "allOf")) or (isinstance(values, dict) and _has_keys(values, root))


def type_of(node: dict[str, Any], root: dict[str, Any]) -> str:
    """A short type: ``integer``, ``list of string``, ``one of: a, b``, ``mapping``, ..."""
    node = _resolve(node, root)
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(type_of(alt, root) for alt in node.get("oneOf", node.get("anyOf")))
    if "const" in node:
        return f"{_literal(node['const'])}"
    if "enum" in node:
        values = [_literal(v) for v in node["enum"]]
        return values[0] if len(values) == 1 else "one of: " + ", ".join(values)
    types = node.get("type")
    if types is None:
        types = "object" if _has_keys(node, root) or "additionalProperties" in node else "any"
    names = []
    for t in types if isinstance(types, list) else [types]:
        values = node.get("additionalProperties")
        if t == "array":
            items = node.get("items")
            item = type_of(items, root) if isinstance(items, dict) else ""
            names.append(f"list of ({item})" if item.startswith("one of") else f"list of {item}" if item else "list")
        elif t == "object" and not any(k in node for k in ("properties", "allOf")):
            if isinstance(values, dict) and not _has_keys(values, root):  # name -> plain value
                names.append(f"mapping of {type_of(values, root)}")
            else:  # name -> block (its keys are listed below it), or free-form
                names.append("mapping")
        else:
            names.append(t)
    return " or ".join(names)


def _condition(schema_if: dict[str, Any]) -> str:
    parts = []
    for key, sub in (schema_if.get("properties") or {}).items():
        values = sub.get("enum", [sub["const"]] if "const" in sub else [])
        parts.append(f"{key}: {', '.join(_literal(v) for v in values)}")
    return "; ".join(parts)


def rows(schema: dict[str, Any] | None = None) -> list[Row]:
    """Every key of the schema, depth first in schema order."""
    root = schema if schema is not None else load_schema()
    out: list[Row] = []

    def emit(path: str, node: dict[str, Any], required: bool, when: list[str]) -> None:
        resolved = _resolve(node, root)
        default = _literal(resolved["default"]) if "default" in resolved else ("required" if required else "")
        row = Row(path, type_of(node, root), default, _text(resolved.get("description", "")), list(when))
        for seen in out:  # the same key in several if/then branches: one row naming every case
            if (seen.path, seen.type, seen.default, seen.description) == (row.path, row.type, row.default,
                                                                          row.description) and seen.when and when:
                seen.when.extend(w for w in when if w not in seen.when)
                break
        else:
            out.append(row)
        children(path, resolved, when)

    def children(path: str, node: dict[str, Any], when: list[str]) -> None:
        required = set(node.get("required", []))
        for key, sub in (node.get("properties") or {}).items():
            emit(f"{path}.{key}" if path else key, sub, key in required, when)
        for part in node.get("allOf", []):
            if "if" in part:
                for branch in ("then", "else"):
                    if branch in part:
                        cond = _condition(part["if"]) if branch == "then" else "not " + _condition(part["if"])
                        children(path, _resolve(part[branch], root), [*when, cond])
            else:
                children(path, _resolve(part, root), when)
        values = node.get("additionalProperties")
        if isinstance(values, dict) and _has_keys(values, root):
            emit(f"{path}.{PLACEHOLDERS.get(path, '<name>')}", values, False, when)
        items = node.get("items")
        if isinstance(items, dict) and _has_keys(items, root):
            children(f"{path}[]", _resolve(items, root), when)

    children("", root, [])
    return out


def method_rows() -> list[Row]:
    """A method's own settings (``FusionMethod.param_schema``, defaults from its ``param_defaults``), one
    row per key under the method that declares them, naming every method that reads them."""
    from medmix.methods import get_method_class, known_methods

    names = [n for n in known_methods() if "<" not in n]
    out = []
    for name in names:
        cls = get_method_class(name)
        if "param_schema" not in vars(cls):
            continue
        readers = [n for n in names if get_method_class(n).param_schema is cls.param_schema]
        for key, spec in cls.param_schema.items():
            default = _literal(cls.param_defaults[key]) if key in cls.param_defaults else ""
            out.append(Row(f"method_params.{name}.{key}", type_of(spec, {}), default,
                           _text(spec.get("description", "")), [f"methods: {', '.join(readers)}"]))
    return out


def _when(conditions: list[str]) -> str:
    """``["kind: image, volume", "kind: text"]`` -> ``kind: image, volume, text``."""
    merged: dict[str, list[str]] = {}
    for cond in conditions:
        key, _, values = cond.partition(": ")
        merged.setdefault(key, [])
        merged[key] += [v for v in values.split(", ") if v not in merged[key]]
    return "; ".join(f"{key} {', '.join(values)}" for key, values in merged.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """A description as a table cell: ``<name>`` outside code spans escaped so that it is not read as HTML."""
    parts = text.split("`")
    return _cell("`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts)))


def render(schema: dict[str, Any] | None = None) -> str:
    """The Markdown of ``docs/configuration.md``."""
    root = schema if schema is not None else load_schema()
    all_rows = rows(root) + (method_rows() if schema is None else [])
    lines = [
        f"<!-- Generated from workflow/schemas/config.schema.yaml and the settings registered methods and dataset "
        f"adapters declare, by `{WRITE_COMMAND}`; do not edit by hand. -->",
        "",
        "# Configuration",
        "",
        INTRO.rstrip("\n"),
        "",
        "## Every key",
        "",
        "Each key of the schema by its dotted path, `<...>` standing for a name you choose and `[]` for the"
        " entries of a list. *Default*: the value the schema fills in when the key is absent (empty: none;"
        " `required`: the key must be given). A key that only some adapters or modality kinds accept names"
        " them in parentheses.",
        "",
    ]
    for top in root.get("properties", {}):
        section = [r for r in all_rows if r.path == top or r.path.startswith((f"{top}.", f"{top}["))]
        lines += [f"### `{top}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        for r in section:
            desc = r.description
            if r.when:
                desc = f"*({_when(r.when)})* {desc}"
            default = f"`{_cell(r.default)}`" if r.default and r.default != "required" else r.default
            lines.append(f"| `{_cell(r.path)}` | {_cell(r.type)} | {default} | {_prose(desc)} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def missing_descriptions(schema: dict[str, Any] | None = None) -> list[str]:
    """Dotted paths of the keys whose schema gives no ``description``."""
    return [r.path for r in rows(schema) if not r.description]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medmix.plan.docs_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH.relative_to(REPO_ROOT)}")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(DOC_PATH, text)
        print(f"wrote {DOC_PATH.relative_to(REPO_ROOT)} ({len(text.splitlines())} lines)")
        return 0
    if args.check:
        current = DOC_PATH.read_text() if DOC_PATH.is_file() else ""
        if current != text:
            print(f"{DOC_PATH.relative_to(REPO_ROOT)} is out of date: run `{WRITE_COMMAND}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
