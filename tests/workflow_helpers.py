"""Helpers shared by the tests that plan or run the workflow (no test module imports another for them)."""

from __future__ import annotations


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
