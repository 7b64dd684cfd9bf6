"""Generate a synthetic multimodal cohort with the three challenges of MedMIX planted in it.

(a) Within a modality, different experts see different parts of the signal: in images some
findings are smooth brightness changes (an intensity expert sees them) and others zero-mean
texture (a texture expert sees them); in EHR some outcomes shift variable levels (summary
statistics see them) and others change oscillation frequency at equal mean and variance (a
convolutional expert sees them); in notes a finding is written either as a paraphrase (a
sentence encoder sees it) or only as a diagnosis code (a keyword expert sees it).
(b) Which modality carries the decisive evidence varies from sample to sample: each sample has
a carrier modality with full-strength evidence; the others get weak evidence.
(c) Missingness is not at random: it depends on the labels (sick patients lack lateral views,
CT is ordered for sicker patients, normal studies are documented less often).

Everything is a deterministic function of the seed. Files are written under ``out_dir`` with a
``manifest.csv`` (relative paths) that the generic manifest adapter reads.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medmix.demo.ehr_variables import EHR_VARIABLES
from medmix.store.atomic import atomic_dir

IMG = 64
CXR_LABELS = ("effusion", "opacity", "interstitial", "cardiomegaly")
ICU_LABELS = ("mortality", "long_stay", "readmission")
SPLIT_RATIOS = (0.65, 0.15, 0.20)
WEAK = 0.25  # evidence strength outside the carrier modality

PHRASES = {
    "effusion": ["blunting of the costophrenic angle consistent with pleural effusion",
                 "fluid layering in the pleural space", "a moderate pleural effusion is present",
                 "meniscus sign at the lung base suggesting effusion"],
    "opacity": ["patchy airspace opacity", "focal consolidation in the lower lobe",
                "ill-defined opacity concerning for pneumonia", "hazy parenchymal opacification"],
    "interstitial": ["reticular interstitial markings", "fine interstitial pattern bilaterally",
                     "prominent interstitial lines suggesting fibrosis", "diffuse reticulonodular pattern"],
    "cardiomegaly": ["the cardiac silhouette is enlarged", "cardiomegaly", "enlarged heart size",
                     "increased cardiothoracic ratio"],
    "mortality": ["hemodynamically unstable requiring escalating vasopressors", "refractory septic shock",
                  "multi-organ failure with worsening acidosis", "goals of care discussion given poor prognosis"],
    "long_stay": ["slow ventilator wean anticipated", "complex wound requiring prolonged care",
                  "awaiting placement in a rehabilitation facility", "prolonged recovery expected"],
    "readmission": ["lives alone with limited support", "history of poor medication adherence",
                    "multiple prior admissions this year", "missed follow-up appointments"],
}
CODES = {"effusion": "J90", "opacity": "J18.9", "interstitial": "J84.9", "cardiomegaly": "I51.7",
         "mortality": "R65.21", "long_stay": "Z99.11", "readmission": "Z91.19"}
NORMAL = ["lungs are clear", "no acute cardiopulmonary process", "heart size is normal",
          "no pleural effusion or pneumothorax", "stable appearance", "patient resting comfortably"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _assign_splits(n_patients: int, rng: np.random.Generator, external: bool) -> np.ndarray:
    if external:
        return np.array(["test"] * n_patients)
    order = rng.permutation(n_patients)
    cuts = np.floor(np.cumsum(SPLIT_RATIOS)[:-1] * n_patients).astype(int)
    split = np.empty(n_patients, dtype=object)
    for name, chunk in zip(("train", "val", "test"), np.split(order, cuts), strict=True):
        split[chunk] = name
    return split


def _evidence(rng, labels: dict[str, int], is_carrier: bool) -> dict[str, float]:
    """Evidence strength per label in one modality of one sample.

    The carrier modality shows every positive label at full strength; any other modality shows
    a positive label only sometimes and weakly, and now and then shows spurious weak evidence
    for a negative one, so no single modality is decisive for every patient.
    """
    out = {}
    for name, positive in labels.items():
        if is_carrier:
            out[name] = 1.0 if positive else (WEAK if rng.random() < 0.05 else 0.0)
        elif positive:
            out[name] = float(rng.uniform(0.1, 0.4)) if rng.random() < 0.4 else 0.0
        else:
            out[name] = float(rng.uniform(0.1, 0.4)) if rng.random() < 0.1 else 0.0
    return out


# --------------------------------------------------------------------------- images
def _grid():
    yy, xx = np.mgrid[0:IMG, 0:IMG].astype(np.float32) / IMG
    return yy, xx


def _ellipse(yy, xx, cy, cx, ry, rx):
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0


def render_cxr(rng, ev: dict[str, float], view: str, offset: float, noise: float) -> np.ndarray:
    """A 64x64 chest-radiograph-like image; ``ev`` maps finding -> evidence strength (0 = absent)."""
    yy, xx = _grid()
    img = np.full((IMG, IMG), 25.0, np.float32)
    img[_ellipse(yy, xx, 0.55, 0.5, 0.42, 0.42)] = 110.0  # body
    if view == "frontal":
        lungs = [_ellipse(yy, xx, 0.5, 0.3, 0.3, 0.14), _ellipse(yy, xx, 0.5, 0.7, 0.3, 0.14)]
        heart_c, heart_r = (0.62, 0.45), (0.13, 0.12)
    else:
        lungs = [_ellipse(yy, xx, 0.5, 0.45, 0.32, 0.22)]
        heart_c, heart_r = (0.62, 0.62), (0.14, 0.1)
    for lung in lungs:
        img[lung] = 55.0
    width = heart_r[1] * (1.0 + 0.45 * ev.get("cardiomegaly", 0.0))
    img[_ellipse(yy, xx, heart_c[0], heart_c[1], heart_r[0], width)] = 140.0
    lung_any = np.any(lungs, axis=0)
    if ev.get("effusion", 0) > 0:  # brightening of a lung base: smooth, low-frequency
        base = lungs[rng.integers(len(lungs))] & (yy > 0.62)
        img[base] += 70.0 * ev["effusion"]
    if ev.get("opacity", 0) > 0:  # a smooth blob inside the lungs
        ys, xs = np.nonzero(lung_any)
        k = rng.integers(len(ys))
        cy, cx = ys[k] / IMG, xs[k] / IMG
        img += 60.0 * ev["opacity"] * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.07**2)))
    if ev.get("interstitial", 0) > 0:  # zero-mean fine texture over the lungs
        phase = rng.uniform(0, 2 * np.pi)
        pattern = np.sin(2 * np.pi * 16 * xx + phase) * np.sin(2 * np.pi * 16 * yy)
        img += 35.0 * ev["interstitial"] * pattern * lung_any
    img += rng.normal(0, noise, img.shape) + offset
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- notes
def write_note(rng, ev: dict[str, float], labels: dict[str, int], kind: str) -> str:
    """A radiology-style note; findings appear as a paraphrase or only as a diagnosis code."""
    parts = []
    for name, strength in ev.items():
        if strength > 0 and rng.random() < 0.3 + 0.7 * strength:
            if rng.random() < 0.5:
                parts.append(str(rng.choice(PHRASES[name])))
            else:
                parts.append(f"coded {CODES[name]}")
    for _ in range(rng.integers(1, 3)):
        parts.append(str(rng.choice(NORMAL)))
    rng.shuffle(parts)
    head = "FINDINGS: " if kind == "cxr" else "ICU PROGRESS NOTE: "
    return head + ". ".join(parts) + ". IMPRESSION: see above."


# --------------------------------------------------------------------------- EHR
def make_ehr(rng, ev: dict[str, float], missing_boost: float) -> np.ndarray:
    """[48, 46] hourly series with gaps (NaN); mortality shifts levels, long stay changes frequency."""
    hours = np.arange(48, dtype=np.float32)
    cols = []
    for name, (mean, between, noise, sampling) in EHR_VARIABLES.items():
        level = mean + rng.normal(0, between)
        series = level + rng.normal(0, noise, 48).cumsum() * 0.3 + rng.normal(0, noise, 48)
        if name in ("lactate", "bun", "creatinine") and ev["mortality"] > 0:
            series += ev["mortality"] * 2.5 * between
        if name in ("map", "sbp", "gcs_total") and ev["mortality"] > 0:
            series -= ev["mortality"] * 1.5 * between
        if name in ("heart_rate", "temperature", "resp_rate"):
            # Every patient oscillates with the same amplitude; long stay -> a 4 h period, else 16 h.
            period = 4.0 if ev["long_stay"] > 0.5 else 16.0
            series += 2.0 * noise * np.sin(2 * np.pi * hours / period + rng.uniform(0, 2 * np.pi))
        if sampling == "hourly":
            observed = rng.random(48) > 0.1 + missing_boost
        else:
            observed = np.zeros(48, bool)
            observed[int(rng.integers(0, sampling)) :: int(sampling)] = True
            observed &= rng.random(48) > 0.15 + missing_boost
        cols.append(np.where(observed, series, np.nan))
    return np.stack(cols, axis=1).astype(np.float32)


# --------------------------------------------------------------------------- CT
def make_ct(rng, ev: dict[str, float], offset: float) -> np.ndarray:
    """[H, W, D] = [40, 40, 32] HU volume (depth last) with a lesion at a random depth."""
    h, w, d = 40, 40, 32
    yy, xx, zz = np.mgrid[0:h, 0:w, 0:d].astype(np.float32)
    vol = np.full((h, w, d), -1000.0, np.float32)
    body = ((yy - h / 2) / (h * 0.42)) ** 2 + ((xx - w / 2) / (w * 0.45)) ** 2 <= 1
    vol[body] = 40.0
    organ = ((yy - h * 0.55) / 8) ** 2 + ((xx - w * 0.4) / 10) ** 2 <= 1
    vol[organ] = 60.0
    cz, cy, cx = rng.uniform(4, d - 4), rng.uniform(h * 0.35, h * 0.65), rng.uniform(w * 0.3, w * 0.7)
    lesion = ((zz - cz) / 4) ** 2 + ((yy - cy) / 5) ** 2 + ((xx - cx) / 5) ** 2 <= 1
    vol[lesion] += 40.0 + 260.0 * ev["mortality"]  # brightness: intensity profile sees it
    if ev["long_stay"] > 0:  # speckled, zero-mean lesion texture: a texture expert sees it
        speck = np.sign(np.sin(xx * 2.7) * np.sin(yy * 2.7))
        vol[lesion] += 220.0 * ev["long_stay"] * speck[lesion]
    vol += rng.normal(0, 12, vol.shape) + offset
    return vol.astype(np.int16)


# --------------------------------------------------------------------------- cohort
def generate_cohort(out_dir: str | Path, kind: str, n_patients: int, seed: int, shift: bool = False) -> Path:
    """Write the cohort into ``out_dir`` (replaced if it exists); returns the manifest path."""
    import nibabel as nib
    from PIL import Image

    final = Path(out_dir)
    # Built in a sibling temp folder and swapped in at the end: an interrupted run leaves no half cohort.
    with atomic_dir(final) as out:
        (out / "images").mkdir(parents=True)
        if kind == "icu":
            (out / "ehr").mkdir()
            (out / "ct").mkdir()
        rng = np.random.default_rng(seed)
        splits = _assign_splits(n_patients, rng, external=shift)
        offset, noise, miss = (18.0, 12.0, 0.1) if shift else (0.0, 8.0, 0.0)
        label_names = CXR_LABELS if kind == "cxr" else ICU_LABELS
        modalities = ("frontal", "lateral", "note") if kind == "cxr" else ("frontal", "note", "ehr", "ct")
        carrier_p = (0.4, 0.2, 0.4) if kind == "cxr" else (0.25, 0.25, 0.3, 0.2)
        rows = []
        for p in range(n_patients):
            pid = f"P{p:05d}"
            frailty = rng.normal(0.3 if shift else 0.0, 1.0)
            n_studies = 1 + int(rng.random() < (0.4 if kind == "cxr" else 0.15))
            for s in range(n_studies):
                sid = f"{pid}_S{s}"
                if kind == "cxr":
                    base = {"effusion": -1.2, "opacity": -1.0, "interstitial": -1.6, "cardiomegaly": -1.3}
                    labels = {k: int(rng.random() < _sigmoid(b + 0.8 * frailty)) for k, b in base.items()}
                else:
                    z, wlat, r = frailty + rng.normal(0, 0.5), rng.normal(0, 1), rng.normal(0, 1)
                    labels = {"mortality": int(rng.random() < _sigmoid(1.8 * z - 2.0)),
                              "long_stay": int(rng.random() < _sigmoid(1.5 * wlat + 0.4 * z - 0.8)),
                              "readmission": int(rng.random() < _sigmoid(1.2 * r + 0.3 * frailty - 1.4))}
                carrier = modalities[rng.choice(len(modalities), p=carrier_p)]
                evidence = {mod: _evidence(rng, labels, mod == carrier) for mod in modalities}

                def ev_for(mod, evidence=evidence):
                    return evidence[mod]

                sick = sum(labels.values()) > 0
                row = {"sample_id": sid, "patient_id": pid, "split": splits[p], **labels}
                # (c) missing not at random.
                if kind == "cxr":
                    present = {"frontal": rng.random() > 0.05,
                               "lateral": rng.random() > 0.1 + 0.45 * labels["effusion"] + 0.15 * labels["opacity"],
                               "note": rng.random() > 0.05 + (0.25 if not sick else 0.0)}
                else:
                    present = {"frontal": rng.random() > 0.2 + 0.2 * labels["long_stay"],
                               "note": rng.random() > 0.1 + miss,
                               "ehr": rng.random() > 0.08 + miss,
                               "ct": rng.random() < 0.25 + 0.5 * _sigmoid(2 * frailty) - miss}
                for view in ("frontal", "lateral"):
                    if view in modalities:
                        rel = f"images/{sid}_{view}.png"
                        if present[view]:
                            ev = ev_for(view)
                            if kind == "icu":  # severity -> diffuse opacity, long stay -> texture
                                ev = {"opacity": ev["mortality"], "interstitial": ev["long_stay"],
                                      "effusion": 0.0, "cardiomegaly": 0.0}
                            Image.fromarray(render_cxr(rng, ev, view, offset, noise), mode="L").save(out / rel)
                        row[view] = rel if present[view] else ""
                row["note"] = write_note(rng, ev_for("note"), labels, kind) if present["note"] else ""
                if kind == "icu":
                    if present["ehr"]:
                        series = make_ehr(rng, ev_for("ehr"), miss)
                        rel = f"ehr/{sid}.csv"
                        with open(out / rel, "w", newline="") as fh:
                            wr = csv.writer(fh)
                            wr.writerow(["hour", *EHR_VARIABLES])
                            for t in range(series.shape[0]):
                                wr.writerow([t, *("" if np.isnan(v) else f"{v:.4g}" for v in series[t])])
                        row["ehr"] = rel
                    else:
                        row["ehr"] = ""
                    if present["ct"]:
                        rel = f"ct/{sid}.nii.gz"
                        affine = np.diag([3.0, 3.0, 3.0, 1.0])
                        nib.save(nib.Nifti1Image(make_ct(rng, ev_for("ct"), offset), affine), str(out / rel))
                        row["ct"] = rel
                    else:
                        row["ct"] = ""
                rows.append(row)
        manifest = out / "manifest.csv"
        columns = ["sample_id", "patient_id", "split", *label_names, *modalities]
        with open(manifest, "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=columns)
            wr.writeheader()
            for row in rows:
                wr.writerow({k: row.get(k, "") for k in columns})
    return final / manifest.name
