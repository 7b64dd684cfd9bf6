"""What a dataset will contain, known from its config alone (the workflow plans jobs before any cohort exists).

Named adapters fix their modalities; a ``modalities`` block in their config (for committee
overrides, or to keep only some modalities) must use the adapter's names and kinds, which
:func:`selected_modalities` enforces.
"""

from __future__ import annotations

from typing import Any

from medmix.cohort import CohortError

FIXED_MODALITIES: dict[str, dict[str, str]] = {
    "iu_xray": {"frontal": "image", "lateral": "image", "note": "text"},
    "mimic_iv_mm": {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"},
    # MIMIC-III has no CXR: frontal/lateral exist only when the config declares them (to match the
    # development dataset's modalities), and are then missing for every stay.
    "mimic_iii": {"frontal": "image", "lateral": "image", "note": "text", "ehr": "timeseries"},
    "mmist_ccrcc": {"ct": "volume", "wsi": "slide", "note": "text"},
}

#: IU X-ray with ``note_sections: separate``: the report's sections are three text modalities.
IU_XRAY_SECTIONS: tuple[str, ...] = ("indication", "findings", "impression")
#: Values of the IU X-ray ``note_sections`` option (``joined``: one ``note`` modality, the default).
NOTE_SECTIONS = ("joined", "separate")

#: Modalities built when the config lists none (default: all of the adapter's).
DEFAULT_SELECTION: dict[str, tuple[str, ...]] = {"mimic_iii": ("note", "ehr")}


def adapter_modalities(adapter: str, cfg: dict[str, Any] | None = None) -> dict[str, str]:
    """modality -> kind that the named ``adapter`` can provide under ``cfg``'s options."""
    fixed = dict(FIXED_MODALITIES[adapter])
    if adapter == "iu_xray":
        sections = (cfg or {}).get("note_sections", "joined")
        if sections not in NOTE_SECTIONS:
            raise CohortError(f"iu_xray: note_sections must be one of {NOTE_SECTIONS}, got {sections!r}")
        if sections == "separate":
            fixed.pop("note")
            fixed.update({s: "text" for s in IU_XRAY_SECTIONS})
    return fixed


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
    if adapter not in FIXED_MODALITIES:
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
    if adapter in FIXED_MODALITIES:
        return selected_modalities("?", cfg, adapter)
    return {m: spec["kind"] for m, spec in (cfg.get("modalities") or {}).items()}


def declared_labels(cfg: dict[str, Any]) -> list[str]:
    """The cohort's label names (``label:<name>`` columns)."""
    adapter = cfg.get("adapter", "manifest")
    if adapter == "iu_xray":
        from medmix.datasets.iu_xray import DEFAULT_FINDINGS, slug

        return [slug(h) for h in (cfg.get("labels") or DEFAULT_FINDINGS)]
    if adapter in ("mimic_iv_mm", "mimic_iii"):
        from medmix.datasets.mimic import OUTCOMES

        return list(cfg.get("labels") or OUTCOMES)
    if adapter == "mmist_ccrcc":
        from medmix.datasets.mmist_ccrcc import LABEL

        return [LABEL]
    if cfg.get("task") == "multiclass":
        return [str(c) for c in cfg.get("classes") or []]
    return list(cfg.get("labels") or [])


def selected_modalities(name: str, cfg: dict[str, Any], adapter: str) -> dict[str, str]:
    """The named adapter's modalities, restricted to those the config lists (all when it lists none)."""
    fixed = adapter_modalities(adapter, cfg)
    declared = cfg.get("modalities")
    if not declared:
        default = DEFAULT_SELECTION.get(adapter, tuple(fixed))
        return {m: k for m, k in fixed.items() if m in default}
    given = {m: (spec or {}).get("kind") for m, spec in declared.items()}
    wrong = {m: k for m, k in given.items() if fixed.get(m) != k}
    if wrong:
        raise CohortError(
            f"dataset {name!r}: adapter {adapter!r} provides modalities {fixed}; config declares {wrong}"
        )
    return {m: k for m, k in fixed.items() if m in given}
