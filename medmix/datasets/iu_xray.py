"""OpenI / IU X-ray (Demner-Fushman et al., JAMIA 2016): frontal + lateral CXR and the report.

Two distribution layouts are read (config keys in brackets; paths relative to the workflow folder):

- the two-CSV layout (Kaggle "chest-xrays-indiana-university"): ``indiana_reports.csv`` (uid, MeSH,
  Problems, image, indication, comparison, findings, impression) [``reports_csv``] and
  ``indiana_projections.csv`` (uid, filename, projection Frontal/Lateral) [``projections_csv``];
- the original Open-i ``ecgen-radiology`` folder of XML reports [``reports_xml_dir``] (one
  ``<uid>.xml`` per report: ``AbstractText`` FINDINGS / IMPRESSION, ``MeSH/major`` terms,
  ``parentImage`` ids). The XML does not say which image is frontal, so this layout also needs
  ``projections_csv`` (the Kaggle table covers the whole collection).

Images live in ``images_dir`` as ``<filename>`` (Kaggle: ``1_IM-0001-4001.dcm.png``) or as the
Open-i PNG name (``CXR1_1_IM-0001-4001.png``); both spellings are tried. An image that does not
exist is a missing modality, counted in the summary, never an error.

Samples: one per report (``sample_id = patient_id = "CXR<uid>"``; the collection has one study per
patient, so the report id is the patient id). Frontal / lateral: the first image of each
projection in the projections table. Note (``note_sections: joined``, the default):
``FINDINGS: ...`` and ``IMPRESSION: ...`` joined by a newline (empty sections left out; both
empty = missing note). With ``note_sections: separate`` the report gives three text modalities
instead of ``note``: ``indication``, ``findings`` and ``impression`` (each the section's raw
text; an empty section is that modality missing, so the natural missingness of the sections is
kept). :func:`medmix.datasets.declared.default_modalities` gives the modality block of a config
that declares none.

Labels: 15 binary findings from the MeSH field. A report is positive for a finding when one of its
MeSH terms has that top-level heading (the text before the first ``/``, case-insensitive); reports
indexed ``normal`` are negative for all; ``No Indexing`` / empty MeSH makes all labels unknown
(NaN). The default list is FIXED (it never depends on the split or on the data at hand), see
:data:`DEFAULT_FINDINGS`; config ``labels: [...]`` (headings or their slugs) replaces it.
Split: 0.65 / 0.15 / 0.20 by patient (``split_ratios`` / ``split_seed`` override).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as ET
import pandas as pd
from defusedxml import DefusedXmlException

from medmix.cohort import Cohort, CohortError
from medmix.datasets import register_adapter
from medmix.datasets.declared import selected_modalities
from medmix.datasets.manifest import cohort_from_table, read_table
from medmix.datasets.paths import config_path, resolve_inside

#: The 15 findings (MeSH top-level headings) used when config gives no ``labels``.
#: Provenance: our fixed choice of frequent radiographic-finding headings of the IU X-ray MeSH
#: index (the MedMIX paper says "15 binary radiographic findings" without naming them). We could
#: not recount the full 3,955-report collection offline, so this is not guaranteed to be the
#: exact top-15 by frequency; ``python -m medmix.datasets.iu_xray <indiana_reports.csv>`` ranks
#: the headings of a full copy by the documented rule, and ``labels:`` in config overrides.
DEFAULT_FINDINGS = (
    "Cardiomegaly",
    "Pulmonary Atelectasis",
    "Opacity",
    "Calcified Granuloma",
    "Lung",
    "Thoracic Vertebrae",
    "Spine",
    "Calcinosis",
    "Markings",
    "Pleural Effusion",
    "Diaphragm",
    "Density",
    "Granulomatous Disease",
    "Nodule",
    "Airspace Disease",
)
#: Headings that are not findings: excluded by the ranking rule.
NON_FINDINGS = ("normal", "No Indexing", "Technical Quality of Image Unsatisfactory")
UNINDEXED = ("", "no indexing")
SPLIT_RATIOS = (0.65, 0.15, 0.20)
VIEWS = {"frontal": "Frontal", "lateral": "Lateral"}


def slug(heading: str) -> str:
    """``'Pulmonary Atelectasis'`` -> ``'pulmonary_atelectasis'`` (the label column name)."""
    return re.sub(r"[^a-z0-9]+", "_", heading.strip().lower()).strip("_")


def mesh_headings(terms: Iterable[str]) -> set[str]:
    """Slugs of the top-level headings of MeSH terms such as ``'Opacity/lung/base/left'``."""
    return {slug(t.split("/", 1)[0]) for t in terms if t.strip()}


def split_mesh(field: str) -> list[str]:
    """The terms of a CSV MeSH field (``'Cardiomegaly/borderline;Pulmonary Artery/enlarged'``)."""
    return [t.strip() for t in str(field).split(";") if t.strip()]


def finding_labels(terms: list[str], findings: list[str]) -> dict[str, float]:
    """0/1 per finding slug; all NaN when the report was not indexed."""
    if not terms or all(t.strip().lower() in UNINDEXED for t in terms):
        return {f: float("nan") for f in findings}
    present = mesh_headings(terms)
    return {f: float(f in present) for f in findings}


def rank_headings(mesh_fields: Iterable[list[str]], exclude: Iterable[str] = NON_FINDINGS) -> list[tuple[str, int]]:
    """Top-level headings ranked by the number of reports that carry them (the labelling rule)."""
    skip = {slug(e) for e in exclude}
    counts: Counter[str] = Counter()
    names: dict[str, str] = {}
    for terms in mesh_fields:
        for term in terms:
            heading = term.split("/", 1)[0].strip()
            names.setdefault(slug(heading), heading)
        counts.update(h for h in mesh_headings(terms) if h and h not in skip)
    return [(names[h], n) for h, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


#: With ``note_sections: separate``: the report's sections are three text modalities.
IU_XRAY_SECTIONS: tuple[str, ...] = ("indication", "findings", "impression")
#: Values of the ``note_sections`` option (``joined``: one ``note`` modality, the default).
NOTE_SECTIONS = ("joined", "separate")


def iu_xray_modalities(cfg: dict[str, Any]) -> dict[str, str]:
    """frontal + lateral images and the report: one ``note``, or its three sections (``note_sections``)."""
    sections = cfg.get("note_sections", "joined")
    if sections not in NOTE_SECTIONS:
        raise CohortError(f"iu_xray: note_sections must be one of {NOTE_SECTIONS}, got {sections!r}")
    text = IU_XRAY_SECTIONS if sections == "separate" else ("note",)
    return {"frontal": "image", "lateral": "image", **{m: "text" for m in text}}


def iu_xray_labels(cfg: dict[str, Any]) -> list[str]:
    return [slug(h) for h in (cfg.get("labels") or DEFAULT_FINDINGS)]


@register_adapter("iu_xray", modalities=iu_xray_modalities, labels=iu_xray_labels)
def load_iu_xray(name: str, cfg: dict[str, Any], base_dir: Path) -> Cohort:
    """Build the IU X-ray cohort from either distribution layout (see the module docstring)."""
    where = f"dataset {name!r}"
    keep = selected_modalities(name, cfg, "iu_xray")
    findings = [slug(h) for h in (cfg.get("labels") or DEFAULT_FINDINGS)]
    if len(set(findings)) != len(findings):
        raise CohortError(f"{where}: duplicate findings in labels {cfg.get('labels')}")
    if cfg.get("reports_xml_dir"):
        reports = read_xml_reports(config_path(base_dir, cfg["reports_xml_dir"]), where)
        layout = "ecgen-radiology XML"
    elif cfg.get("reports_csv"):
        reports = read_csv_reports(config_path(base_dir, cfg["reports_csv"]), where)
        layout = "two-CSV (indiana_reports.csv + indiana_projections.csv)"
    else:
        raise CohortError(f"{where}: set 'reports_csv' (two-CSV layout) or 'reports_xml_dir' (ecgen-radiology XML)")
    if not cfg.get("projections_csv"):
        raise CohortError(f"{where}: 'projections_csv' (indiana_projections.csv) is required: it says which image "
                          "is frontal and which lateral")
    views = read_projections(config_path(base_dir, cfg["projections_csv"]), where)

    notes: list[str] = []
    images_dir = config_path(base_dir, cfg["images_dir"]) if cfg.get("images_dir") else None
    if images_dir is None:
        notes.append("no images_dir configured: frontal and lateral images are missing for every sample")
    elif not images_dir.is_dir():
        notes.append(f"images_dir {images_dir.resolve()} does not exist: every referenced image is counted as absent")
    root = (images_dir or Path(base_dir)).resolve()

    listed = {stem for entries in views.values() for stem, _ in entries}
    unlisted = sorted(f"CXR{r['uid']}_{image_stem(i)}" for r in reports for i in r.get("images", [])
                      if image_stem(i) not in listed)
    if unlisted:
        notes.append(f"{len(unlisted)} report image(s) have no row in projections_csv and are not used: "
                     f"{', '.join(unlisted[:10])}{' ...' if len(unlisted) > 10 else ''}")
    rows = []
    for rep in reports:
        row = {"sample_id": f"CXR{rep['uid']}", "patient_id": f"CXR{rep['uid']}", "note": rep["note"],
               **{sec: rep["sections"].get(sec, "") for sec in IU_XRAY_SECTIONS}}
        for view, projection in VIEWS.items():
            stem = _first_view(rep, views, projection)
            row[view] = "" if stem is None or images_dir is None else _image_cell(root, stem, where, rep["uid"])
        row.update({f: _label_cell(v) for f, v in finding_labels(rep["mesh"], findings).items()})
        rows.append(row)
    table = pd.DataFrame(rows, columns=["sample_id", "patient_id", "frontal", "lateral", "note", *IU_XRAY_SECTIONS,
                                        *findings])
    spec = {
        "task": "multilabel",
        "labels": findings,
        "id_column": "sample_id",
        "patient_column": "patient_id",
        "split_ratios": list(cfg.get("split_ratios") or SPLIT_RATIOS),
        "split_seed": int(cfg.get("split_seed", 0)),
        "modalities": {m: {"kind": k, "column": m} for m, k in keep.items()},
    }
    extra: dict[str, Any] = {
        "adapter": "iu_xray",
        "layout": layout,
        "note_sections": cfg.get("note_sections", "joined"),
        "label_rule": "1 if a MeSH term's top-level heading (before the first '/') equals the finding; "
        "all unknown for 'No Indexing'",
        "label_headings": list(cfg.get("labels") or DEFAULT_FINDINGS),
    }
    if notes:
        extra["warnings"] = notes
    if cfg.get("role"):
        extra["role"] = cfg["role"]
    return cohort_from_table(name, table, spec, root, extra=extra)


def read_csv_reports(path: Path, where: str) -> list[dict[str, Any]]:
    """Reports from ``indiana_reports.csv``: uid, MeSH terms, note."""
    if not path.is_file():
        raise CohortError(f"{where}: reports_csv {path} does not exist")
    table = read_table(path)
    need = [c for c in ("uid", "findings", "impression") if c not in table.columns]
    if "MeSH" not in table.columns and "Problems" not in table.columns:
        need.append("MeSH")
    if need:
        raise CohortError(f"{where}: {path} lacks column(s) {need}; it has {list(table.columns)}")
    mesh_col = "MeSH" if "MeSH" in table.columns else "Problems"
    return [
        {"uid": r["uid"], "mesh": split_mesh(r[mesh_col]), "note": join_note(r["findings"], r["impression"]),
         "sections": {sec: clean_section(r.get(sec, "")) for sec in IU_XRAY_SECTIONS}}
        for r in table.to_dict("records")
    ]


def read_xml_reports(folder: Path, where: str) -> list[dict[str, Any]]:
    """Reports from the Open-i ``ecgen-radiology`` folder (``*.xml``, sorted by uid)."""
    if not folder.is_dir():
        raise CohortError(f"{where}: reports_xml_dir {folder} is not a folder")
    files = sorted(folder.glob("*.xml"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise CohortError(f"{where}: no .xml reports in {folder}")
    return [parse_xml_report(f, where) for f in files]


def parse_xml_report(path: Path, where: str) -> dict[str, Any]:
    """One ecgen-radiology report: uid, MeSH major terms, note, parentImage ids."""
    try:
        root = ET.parse(path).getroot()  # defusedxml: entity declarations and external references refused
    except DefusedXmlException as err:  # in any encoding (the old byte check missed UTF-16)
        raise CohortError(f"{where}: {path} declares XML entities or external references; refusing "
                          f"to parse it ({err!r})") from err
    except ET.ParseError as err:
        raise CohortError(f"{where}: {path} is not well-formed XML: {err}") from err
    uid_node = root.find("uId")
    uid = uid_node.get("id", "") if uid_node is not None else ""
    uid = uid[3:] if uid.upper().startswith("CXR") else (uid or path.stem)
    sections = {}
    for node in root.iter("AbstractText"):
        sections[(node.get("Label") or "").upper()] = "".join(node.itertext()).strip()
    mesh = [(m.text or "").strip() for m in root.findall("MeSH/major")]
    images = [img.get("id", "") for img in root.findall("parentImage") if img.get("id")]
    return {
        "uid": uid,
        "mesh": [m for m in mesh if m],
        "note": join_note(sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")),
        "sections": {sec: clean_section(sections.get(sec.upper(), "")) for sec in IU_XRAY_SECTIONS},
        "images": images,
    }


def read_projections(path: Path, where: str) -> dict[str, list[tuple[str, str]]]:
    """uid -> [(image stem, projection)] in file order; the stem drops ``.dcm.png`` / ``.png``."""
    if not path.is_file():
        raise CohortError(f"{where}: projections_csv {path} does not exist")
    table = read_table(path)
    need = [c for c in ("uid", "filename", "projection") if c not in table.columns]
    if need:
        raise CohortError(f"{where}: {path} lacks column(s) {need}; it has {list(table.columns)}")
    views: dict[str, list[tuple[str, str]]] = {}
    for r in table.to_dict("records"):
        views.setdefault(r["uid"], []).append((image_stem(r["filename"]), r["projection"]))
    return views


def image_stem(name: str) -> str:
    """``'1_IM-0001-4001.dcm.png'`` / ``'CXR1_1_IM-0001-4001.png'`` / ``'CXR1_1_IM-0001-4001'`` ->
    ``'1_IM-0001-4001'``."""
    stem = re.sub(r"(\.dcm)?\.(png|jpg|jpeg)$", "", name.strip(), flags=re.IGNORECASE)
    return re.sub(r"^CXR\d+_", "", stem, flags=re.IGNORECASE)


def clean_section(text: str) -> str:
    """A section's text, stripped ('' = the section is missing)."""
    return str(text or "").strip()


def join_note(findings: str, impression: str) -> str:
    parts = [f"FINDINGS: {findings.strip()}" if findings.strip() else "",
             f"IMPRESSION: {impression.strip()}" if impression.strip() else ""]
    return "\n".join(p for p in parts if p)


def _first_view(report: dict[str, Any], views: dict[str, list[tuple[str, str]]], projection: str) -> str | None:
    listed = views.get(report["uid"], [])
    if "images" in report:  # XML layout: only the report's own images, in the projections' order
        own = {image_stem(i) for i in report["images"]}
        listed = [(stem, p) for stem, p in listed if stem in own]
    for stem, proj in listed:
        if proj.strip().lower() == projection.lower():
            return stem
    return None


def _image_cell(root: Path, stem: str, where: str, uid: str) -> str:
    """The file name of an image under ``root``: Kaggle spelling, else Open-i spelling, else Kaggle."""
    candidates = [f"{stem}.dcm.png", f"CXR{uid}_{stem}.png", f"{stem}.png"]
    for cand in candidates:
        if resolve_inside(root, cand, f"{where}: report {uid}").exists():
            return cand
    return candidates[0]


def _label_cell(value: float) -> str:
    return "" if value != value else str(int(value))


def main(argv: list[str] | None = None) -> None:
    """Rank the MeSH headings of a full ``indiana_reports.csv`` by the labelling rule."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("reports_csv", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    reports = read_csv_reports(args.reports_csv, str(args.reports_csv))
    ranking = rank_headings(r["mesh"] for r in reports)
    print(f"{len(reports)} reports; top {args.top} non-normal MeSH headings (reports carrying them):")
    for heading, n in ranking[: args.top]:
        print(f"{n:6d}  {heading}")


if __name__ == "__main__":
    main()
