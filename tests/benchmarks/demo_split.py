"""Time a run of the workflow and split its job time by rule (Snakemake's ``benchmark:`` files).

Runs ``snakemake --cores <N> all`` in a fresh folder with this checkout's Snakefile (unless
``--existing`` names a finished run), then prints the wall time and, per rule, the number of jobs,
their summed wall seconds (``s`` column of ``results/benchmarks/<rule>/**.tsv``), their summed CPU
seconds (``cpu_time``) and the share of all job time. Snakemake samples a job's CPU time now and
then, so short jobs' CPU seconds are undercounted; the run's own line gives the CPU time of all its
processes (Snakemake included) from the kernel. Usage::

    python tests/benchmarks/demo_split.py --cores 8 [--configfile config.yaml [config/quick.yaml]] [--folder /tmp/demo8]
    python tests/benchmarks/demo_split.py --existing /tmp/demo8
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Written into the run folder by a timed run: its wall time, for ``--existing``.
WALL_FILE = "demo_split_wall.txt"


def job_cpu(folder: Path) -> dict[str, list[float]]:
    """Per rule, the CPU seconds each job logged at its exit (:data:`medmix.pipeline.CPU_LINE`:
    the kernel's count for the whole job process, start-up and imports included)."""
    from medmix.pipeline import CPU_LINE

    out: dict[str, list[float]] = defaultdict(list)
    root = folder / "logs"
    for log in root.rglob("*.log"):
        parts = log.relative_to(root).parts
        rule = parts[0] if len(parts) > 1 else log.stem
        lines = [line for line in log.read_text(errors="replace").splitlines() if CPU_LINE in line]
        if lines:
            out[rule].append(float(lines[-1].split(CPU_LINE)[1].split()[0]))
    return out


def split(folder: Path) -> list[tuple[str, int, float, float]]:
    """``(rule, jobs, wall s, cpu s)`` per rule, largest CPU first: wall from the ``benchmark:``
    files, CPU from the jobs' own exit lines (:func:`job_cpu`; a rule whose jobs logged none falls
    back to the benchmark's sampled ``cpu_time``, which misses the work after its last sample)."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    root = folder / "results" / "benchmarks"
    for tsv in root.rglob("*.tsv"):
        parts = tsv.relative_to(root).parts
        rule = parts[0] if len(parts) > 1 else tsv.stem  # a one-job rule writes results/benchmarks/<rule>.tsv
        with tsv.open() as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                totals[rule][0] += 1
                totals[rule][1] += float(row["s"])
                cpu = row.get("cpu_time", "")
                totals[rule][2] += float(cpu) if cpu not in ("", "NA") else 0.0
    for rule, seconds in job_cpu(folder).items():
        if rule in totals:
            totals[rule][2] = sum(seconds)
    return sorted(((r, int(v[0]), v[1], v[2]) for r, v in totals.items()), key=lambda r: -r[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="8")
    parser.add_argument("--configfile", nargs="+", default=[str(REPO / "config.yaml")],
                        help="config files, later ones merged over earlier ones (the run folder has no config.yaml)")
    parser.add_argument("--folder", type=Path, help="run folder (default: a new temporary one)")
    parser.add_argument("--existing", type=Path, help="only report the split of this finished run")
    args = parser.parse_args()
    folder = args.existing
    if folder is None:
        folder = args.folder or Path(tempfile.mkdtemp(prefix="medmix-demo-"))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
               "--configfile", *args.configfile, "--cores", args.cores, "all"]
        print(f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}; {' '.join(cmd[2:])}", flush=True)
        t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            raise SystemExit(f"the run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        # Every process of the run (Snakemake, its job processes and theirs), each reaped by its parent.
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        note = (f"{wall:.0f} s, `snakemake --cores {args.cores} all` on {os.cpu_count()} CPUs; CPU time of all its "
                f"processes {cpu:.0f} s ({cpu / (wall * (os.cpu_count() or 1)):.0%} of the CPUs' time)")
        (folder / WALL_FILE).write_text(note + "\n")
        print(f"wall {note}; in {folder}")
    elif (folder / WALL_FILE).is_file():
        print(f"wall {(folder / WALL_FILE).read_text().strip()} (recorded by the run)")
    rows = split(folder)
    total_cpu = sum(r[3] for r in rows) or 1.0
    print(f"{'rule':24} {'jobs':>5} {'wall s':>8} {'cpu s':>8} {'cpu share':>9}")
    for rule, jobs, wall_s, cpu_s in rows:
        print(f"{rule:24} {jobs:5d} {wall_s:8.0f} {cpu_s:8.0f} {cpu_s / total_cpu:9.0%}")
    print(f"{'total':24} {sum(r[1] for r in rows):5d} {sum(r[2] for r in rows):8.0f} {total_cpu:8.0f}")


if __name__ == "__main__":
    main()
