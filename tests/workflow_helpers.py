"""Helpers shared by the tests that plan or run the workflow (no test module imports another for them)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def job_counts(text: str) -> dict[str, int]:
    """Jobs per rule from a Snakemake dry run's output: {} for "Nothing to be done"; otherwise its
    job-count table, and an error when there is none (never a vacuous empty plan)."""
    if "Nothing to be done" in text:
        return {}
    counts, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    if not counts:
        raise AssertionError(f"no job table and not 'Nothing to be done' in the dry run's output:\n{text[-3000:]}")
    return counts


def tiny_predictions(method, train_protocol, signal, rng, n=60):
    """One run's prediction rows on a tiny dataset "dev" (labels a, b; modalities img, note): seeds 0
    and 1, the validation split and the test split under test protocols none, rd30 and note50;
    ``signal`` sets how much the probabilities follow the labels."""
    y = (rng.random((n, 2)) < 0.4).astype(float)
    rows = []
    for seed in (0, 1):
        for eval_set, tests in (("val", ["none"]), ("test", ["none", "rd30", "note50"])):
            for test in tests:
                noise = 0.2 if test != "none" else 0.0
                prob = np.clip(signal * y + (1 - signal - noise) * rng.random((n, 2)) + noise * 0.5, 0, 1)
                rows.append(pd.DataFrame({
                    "dataset": "dev", "method": method, "train_protocol": train_protocol, "cohort": "dev",
                    "eval_set": eval_set, "test_protocol": test, "seed": seed,
                    "sample_id": [f"s{i:02d}" for i in range(n)], "prob:a": prob[:, 0], "prob:b": prob[:, 1],
                    "label:a": y[:, 0], "label:b": y[:, 1], "present:img": np.arange(n) % 3 > 0,
                    "present:note": test != "note50"}))
    return pd.concat(rows, ignore_index=True)
