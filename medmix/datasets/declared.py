"""What a dataset will contain, known from its config alone (the workflow plans jobs before any cohort exists).

Named adapters fix their modalities (each declares them in its own module, :func:`medmix.datasets.register_adapter`); a
``modalities`` block in their config (for committee
overrides, or to keep only some modalities) must use the adapter's names and kinds, which
:func:`selected_modalities` enforces.
"""

from __future__ import annotations

from typing import Any

from medmix.cohort import CohortError
from medmix.datasets import get_adapter


def adapter_modalities(adapter: str, cfg: dict[str, Any] | None = None) -> dict[str, str]:
    """modality -> kind that the named ``adapter`` can provide under ``cfg``'s options."""
    spec = get_adapter(adapter)
    if spec.modalities is None:
        raise CohortError(f"adapter {adapter!r} has no modalities of its own: the config lists them")
    return dict(spec.modalities(cfg or {}))


def has_fixed_modalities(adapter: str) -> bool:
    """Whether ``adapter`` provides its own modalities (a named benchmark adapter), or the config lists them."""
    return get_adapter(adapter).modalities is not None


def default_modalities(cfg: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The ``modalities:`` block a dataset config gets when it declares none.

    For a named adapter (``iu_xray``, ``mimic_iv_mm``, ``mimic_iii``, ``mmist_ccrcc``) it is the
    adapter's default selection under the config's options, each as ``{kind, column}``, e.g.
    ``iu_xray`` with ``note_sections: separate`` -> ``frontal``, ``lateral`` (image) and
    ``indication``, ``findings``, ``impression`` (text). A config that declares modalities gets
    them back unchanged (validated against the adapter). The workflow fills
    ``config["datasets"][name]["modalities"]`` with this before planning jobs.
    """
    adapter = cfg.get("adapter", "manifest")
    declared = cfg.get("modalities")
    if not has_fixed_modalities(adapter):
        if not declared:
            raise CohortError(f"adapter {adapter!r} has no default modalities: declare a `modalities:` block")
        return {m: dict(spec) for m, spec in declared.items()}
    keep = selected_modalities("?", cfg, adapter)
    if declared:
        return {m: dict(declared[m]) for m in keep}
    return {m: {"kind": k, "column": m} for m, k in keep.items()}


def declared_modalities(cfg: dict[str, Any]) -> dict[str, str]:
    """modality -> kind of the dataset's cohort."""
    adapter = cfg.get("adapter", "manifest")
    if has_fixed_modalities(adapter):
        return selected_modalities("?", cfg, adapter)
    return {m: spec["kind"] for m, spec in (cfg.get("modalities") or {}).items()}


def declared_labels(cfg: dict[str, Any]) -> list[str]:
    """The cohort's label names (``label:<name>`` columns)."""
    spec = get_adapter(cfg.get("adapter", "manifest"))
    if spec.labels is not None:
        return list(spec.labels(cfg))
    if cfg.get("task") == "multiclass":
        return [str(c) for c in cfg.get("classes") or []]
    return list(cfg.get("labels") or [])


def selected_modalities(name: str, cfg: dict[str, Any], adapter: str) -> dict[str, str]:
    """The named adapter's modalities, restricted to those the config lists (all when it lists none)."""
    fixed = adapter_modalities(adapter, cfg)
    declared = cfg.get("modalities")
    if not declared:
        default = get_adapter(adapter).default_selection or tuple(fixed)
        return {m: k for m, k in fixed.items() if m in default}
    given = {m: (spec or {}).get("kind") for m, spec in declared.items()}
    wrong = {m: k for m, k in given.items() if fixed.get(m) != k}
    if wrong:
        raise CohortError(
            f"dataset {name!r}: adapter {adapter!r} provides modalities {fixed}; config declares {wrong}"
        )
    return {m: k for m, k in fixed.items() if m in given}
