"""MedMIX on the demo cohort: it learns, and its router follows the expert the demo planted.

In the demo's chest images an effusion is a smooth brightening (the intensity-grid expert sees
it) and an interstitial pattern is zero-mean texture (the texture expert sees it). Trained on
each finding alone, the frontal router must lean towards the matching expert.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from extractors.registry import create_extractor
from extractors.runner import run_extraction
from medmix.data import Standardizer, from_bundle
from medmix.datasets import build_cohort
from medmix.demo import generate_cohort
from medmix.features import assemble
from medmix.methods import create_method
from medmix.protocols import Protocol

EXPERTS = ("image_texture", "image_intensity_grid")
# The router's own learning: without the stacked probe read-out (MedMIX's default), which reads
# every expert linearly and leaves the routed path only the probe's residual errors.
PARAMS = {"lr": 1e-3, "warmup_epochs": 5, "max_epochs": 80, "patience": 15, "threads": 1, "probe_readout": False}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_learning")
    generate_cohort(root / "cxr", "cxr", 300, seed=4)
    cfg = {"adapter": "manifest", "manifest": str(root / "cxr" / "manifest.csv"), "split_column": "split",
           "task": "multilabel", "labels": ["effusion", "opacity", "interstitial", "cardiomegaly"],
           "modalities": {"frontal": {"kind": "image", "column": "frontal"}}}
    cohort = build_cohort("demo_cxr", cfg, root)
    members = []
    for name in EXPERTS:
        path = root / f"{name}.parquet"
        run_extraction(create_extractor(name), cohort.sample_ids, cohort.inputs("frontal"), str(path))
        members.append({"path": path, "role": name})
    data = from_bundle(cohort, assemble(cohort.sample_ids, {"frontal": members}))
    return Standardizer.fit(data.split_part("train")).apply(data)


def _train_on(data, label):
    c = data.labels.index(label)
    one = replace(data, labels=[label], y=data.y[:, c : c + 1])
    train, val, test = (one.split_part(s) for s in ("train", "val", "test"))
    method = create_method("medmix", PARAMS)
    method.fit(train, val, [0], Protocol("none"))
    pred = method.predict(test)
    present = test.mask["frontal"].all(dim=1).numpy()
    auroc = roc_auc_score(test.y[:, 0].numpy(), pred.prob[0, :, 0])
    gates = pred.extras["router:frontal"][0][present]  # [n, 2]: texture, intensity
    assert pred.extra_columns["router:frontal"] == list(EXPERTS)
    return auroc, gates.mean(axis=0)


def test_router_follows_the_planted_expert(demo):
    auroc_int, gates_int = _train_on(demo, "interstitial")
    auroc_eff, gates_eff = _train_on(demo, "effusion")
    # Clearly better than a majority-class predictor (AUROC 0.5).
    assert auroc_int > 0.65 and auroc_eff > 0.65, (auroc_int, auroc_eff)
    texture_share_int, texture_share_eff = gates_int[0], gates_eff[0]
    assert texture_share_int > texture_share_eff + 0.05, (gates_int, gates_eff)
    np.testing.assert_allclose(gates_int.sum(), 1.0, atol=1e-5)
