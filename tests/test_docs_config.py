"""docs/configuration.md is generated from the configuration schema and kept in step with it."""

from __future__ import annotations

from pathlib import Path

from medmix.plan import docs_config

REPO = Path(__file__).resolve().parents[1]


def test_configuration_page_matches_the_schema():
    page = REPO / "docs" / "configuration.md"
    current = page.read_text() if page.is_file() else ""
    assert current == docs_config.render(), (
        "docs/configuration.md differs from workflow/schemas/config.schema.yaml: run "
        "`python -m medmix.plan.docs_config --write`")


def test_every_schema_key_has_a_description():
    missing = docs_config.missing_descriptions()
    assert not missing, ("give these keys a `description` in workflow/schemas/config.schema.yaml, then run "
                         "`python -m medmix.plan.docs_config --write`: " + ", ".join(missing))


def test_nested_referenced_and_conditional_keys_are_rendered():
    schema = {
        "type": "object",
        "properties": {
            "top": {
                "type": "object", "default": {}, "description": "a section",
                "properties": {
                    "rate": {"type": "number", "default": 0.5, "description": "a rate | with a pipe"},
                    "items": {"type": "array", "items": {"$ref": "#/definitions/entry"}, "description": "entries"},
                },
            },
            "named": {
                "type": "object", "description": "by name",
                "additionalProperties": {"$ref": "#/definitions/block"},
            },
        },
        "definitions": {
            "entry": {"type": "object", "required": ["name"],
                      "properties": {"name": {"type": "string", "description": "its name"}}},
            "block": {
                "type": "object", "description": "one block", "required": ["kind"],
                "properties": {"kind": {"enum": ["a", "b"], "description": "which"}},
                "allOf": [
                    {"if": {"properties": {"kind": {"const": "a"}}},
                     "then": {"properties": {"only_a": {"type": "boolean", "description": "for <kind> a"}}}},
                ],
            },
        },
    }
    rows = {r.path: r for r in docs_config.rows(schema)}
    assert list(rows) == ["top", "top.rate", "top.items", "top.items[].name", "named", "named.<name>",
                          "named.<name>.kind", "named.<name>.only_a"]
    assert (rows["top.rate"].type, rows["top.rate"].default) == ("number", "0.5")
    assert rows["top.items[].name"].default == "required"
    assert rows["named.<name>"].description == "one block"
    assert rows["named.<name>.kind"].type == "one of: a, b"
    assert rows["named.<name>.only_a"].when == ["kind: a"]
    text = docs_config.render(schema)
    assert "| `top.rate` | number | `0.5` | a rate \\| with a pipe |" in text
    assert "| `named.<name>.only_a` | boolean |  | *(kind a)* for &lt;kind> a |" in text
