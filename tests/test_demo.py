from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmix.demo import generate_cohort
from medmix.demo.ehr_variables import EHR_VARIABLES


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        if f.suffix == ".gz":  # gzip headers carry a timestamp: hash the voxels
            h.update(np.asarray(nib.load(str(f)).dataobj).tobytes())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def icu(tmp_path_factory):
    out = tmp_path_factory.mktemp("icu")
    generate_cohort(out, "icu", 120, seed=5)
    return out


def test_generation_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((a, 3), (b, 3), (c, 4)):
        generate_cohort(folder, "cxr", 30, seed=seed)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_icu_cohort_layout(icu):
    m = pd.read_csv(icu / "manifest.csv", keep_default_na=False, dtype=str)
    assert set(m.split) == {"train", "val", "test"}
    assert m.groupby("patient_id").split.nunique().max() == 1  # patient-level split
    ehr_path = icu / m.loc[m.ehr != "", "ehr"].iloc[0]
    ehr = pd.read_csv(ehr_path)
    assert list(ehr.columns) == ["hour", *EHR_VARIABLES] and len(EHR_VARIABLES) == 46 and len(ehr) == 48
    assert ehr.isna().to_numpy().any()  # gaps
    ct = nib.load(str(icu / m.loc[m.ct != "", "ct"].iloc[0]))
    assert ct.shape == (40, 40, 32)  # depth last
    vol = np.asarray(ct.dataobj)
    assert vol.min() <= -900 and vol.max() > 100  # Hounsfield units: air and a lesion


def test_missingness_is_not_at_random(tmp_path):
    generate_cohort(tmp_path, "cxr", 400, seed=1)
    m = pd.read_csv(tmp_path / "manifest.csv", keep_default_na=False, dtype=str)
    lateral_missing = m.lateral == ""
    effusion = m.effusion == "1"
    # Patients with an effusion lack the lateral view far more often (they cannot stand).
    assert lateral_missing[effusion].mean() > lateral_missing[~effusion].mean() + 0.25


def test_shifted_cohort_is_external(tmp_path):
    generate_cohort(tmp_path, "icu", 40, seed=2, shift=True)
    m = pd.read_csv(tmp_path / "manifest.csv", keep_default_na=False, dtype=str)
    assert set(m.split) == {"test"}
