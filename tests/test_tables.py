"""Tables read runs from the prediction files' columns, and externals use the development thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmix.evaluation.metrics import tune_thresholds
from medmix.evaluation.tables import collect, main_table_markdown


def _rows(n, eval_set, cohort, rng, shift=0.0):
    y = rng.integers(0, 2, n).astype(float)
    prob = np.clip(0.3 * y + rng.random(n) * 0.7 + shift, 0, 1)
    return pd.DataFrame({"dataset": "dev", "method": "m", "train_protocol": "none", "cohort": cohort,
                         "eval_set": eval_set, "test_protocol": "none", "seed": 0,
                         "sample_id": [f"{cohort}{eval_set}{i}" for i in range(n)], "prob:y": prob, "label:y": y})


def test_collect_uses_columns_and_development_thresholds(tmp_path):
    rng = np.random.default_rng(0)
    own = pd.concat([_rows(40, "val", "dev", rng), _rows(50, "test", "dev", rng)])
    ext = _rows(30, "external:other", "other", rng, shift=0.2)
    # paths say nothing about the run: the columns do
    own.to_parquet(tmp_path / "a.parquet")
    ext.to_parquet(tmp_path / "b.parquet")
    metrics = collect([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], {"dev": "binary"})
    assert set(metrics.eval_set) == {"test", "external:other"}
    assert set(metrics.dataset) == {"dev"} and set(metrics.method) == {"m"}
    val = own[own.eval_set == "val"]
    thr = tune_thresholds(val[["prob:y"]].to_numpy(float), val[["label:y"]].to_numpy(float))
    ext_pred = (ext["prob:y"].to_numpy() >= thr[0]).astype(float)
    acc = float((ext_pred == ext["label:y"].to_numpy()).mean())
    assert np.isclose(metrics.loc[metrics.eval_set == "external:other", "acc"].item(), acc)
    text = main_table_markdown(metrics, [0])
    assert text.index("## dev — test") < text.index("## dev → other (external validation)")


def test_collect_refuses_files_without_run_columns(tmp_path):
    rng = np.random.default_rng(1)
    _rows(10, "val", "dev", rng).drop(columns=["method"]).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="rerun their evaluate jobs"):
        collect([str(tmp_path / "x.parquet")], {"dev": "binary"})
