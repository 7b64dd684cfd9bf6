"""Run the scale-out benchmarks in one go and write ``tests/benchmarks/README.md`` from their output.

Sections, each the verbatim output of a script in this folder (ratios are measured within one
run, so they hold on other machines better than the absolute times):

1. **No-op rerun** of ``snakemake --cores 2 all`` in a finished demo run folder (``--demo-dir``;
   skipped without one): the time to find that nothing is to be done. The folder must have been run
   with this checkout's ``Snakefile`` (another checkout's rules are other code: Snakemake reruns).
   Then that run's wall time (recorded by :mod:`demo_split` when it ran the demo there) and its job
   time by rule.
2. **Paper-scale plan** (:mod:`plan_paper_scale`): job count and ``snakemake -n`` time.
3. **Extraction throughput** (:mod:`bench_extractors`): the pipeline's throughput as a fraction of
   the pure model forward's, per expert (CPU; GPU where one is present).
4. **Trainer** (:mod:`bench_trainer`): the ensemble trainer's speed-up over a plain per-seed loop.

Usage::

    python tests/benchmarks/write_readme.py [--demo-dir /path/to/finished/demo/run] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def run(cmd: list[str], cwd: Path | None = None) -> tuple[str, float]:
    """(combined output, wall seconds) of a command; a failure stops the whole write-up."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return out, wall


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {gpu}, Python {platform.python_version()}, load average at start " \
           f"{os.getloadavg()[0]:.1f}"


#: Progress-bar and weight-loading lines (tqdm) carry no figure: left out of the write-up.
PROGRESS = re.compile(r"(\d+/\d+ \[[^\]]*\]\s*$)|^Loading weights")


def section(title: str, command: str, output: str, wall: float) -> str:
    lines = [line for line in output.splitlines() if not PROGRESS.search(line)]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    command = command.replace(f"{REPO}/", "")
    return f"## {title}\n\n`{command}` ({wall:.0f} s)\n\n```\n{text}\n```\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, help="a folder where `snakemake all` on the demo has finished")
    parser.add_argument("--quick", action="store_true", help="smaller benchmark sizes (a smoke run)")
    parser.add_argument("--out", type=Path, default=HERE / "README.md")
    args = parser.parse_args()
    py = sys.executable
    parts = [f"# Benchmarks\n\nWritten by `python tests/benchmarks/write_readme.py` on "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine()}.\n"]
    if args.demo_dir:
        config = args.demo_dir / "config.yaml"  # a run started in the folder; demo_split passes this checkout's
        cmd = [py, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(args.demo_dir),
               "--configfile", str(config if config.is_file() else REPO / "config.yaml"), "--cores", "2", "all"]
        out, wall = run(cmd)
        if "Nothing to be done" not in out:
            raise SystemExit(f"{args.demo_dir}: `snakemake all` ran jobs; finish the demo run there first")
        parts.append(section("No-op rerun of the demo", "snakemake --cores 2 all", out.splitlines()[-1], wall))
        demo = [py, str(HERE / "demo_split.py"), "--existing", str(args.demo_dir)]
        out, wall = run(demo)
        parts.append(section("The demo run: wall time and job time by rule",
                             f"demo_split.py --existing {args.demo_dir.name}", out, wall))
    else:
        parts.append("## No-op rerun of the demo\n\nNot measured in this write-up (no `--demo-dir`).\n")
    plan = [py, str(HERE / "plan_paper_scale.py"), "--repeats", "1" if args.quick else "2"]
    if args.quick:
        plan += ["--scale", "0.1", "--shards", "4"]
    parts.append(section("Paper-scale plan", " ".join(plan[1:]), *run(plan)))
    ext = [py, str(HERE / "bench_extractors.py")] + (["--n-texts", "60", "--n-images", "200", "--repeats", "1"]
                                                      if args.quick else [])
    parts.append(section("Extraction throughput: pipeline vs pure forward", " ".join(ext[1:]), *run(ext, cwd=REPO)))
    tr = [py, str(HERE / "bench_trainer.py")] + (["--n", "500", "--epochs", "2", "--seeds", "2", "--threads", "1"]
                                                 if args.quick else [])
    parts.append(section("Trainer: ensemble trainer vs a plain per-seed loop", " ".join(tr[1:]), *run(tr, cwd=REPO)))
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
