"""Job logs (medmix.pipeline.setup_logging) keep our INFO messages and drop third-party loader noise."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_job_log_has_our_info_but_not_faiss_loader_noise(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    script = textwrap.dedent(f"""
        import logging
        from medmix.pipeline import setup_logging
        setup_logging({str(log)!r})
        import faiss  # its loader logs INFO lines with ModuleNotFoundError(... swigfaiss_avx512 ...)
        logging.getLogger("medmix.extract").info("our info line")
        logging.getLogger("extractors.something").info("stage-1 info line")
        logging.getLogger("faiss.loader").warning("third-party warning line")
        logging.getLogger("faiss.loader").info("third-party info line")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = log.read_text()
    assert "INFO medmix.extract: our info line" in text
    assert "INFO extractors.something: stage-1 info line" in text
    assert "WARNING faiss.loader: third-party warning line" in text
    assert "swigfaiss" not in text and "ModuleNotFoundError" not in text and "third-party info line" not in text


def test_job_log_ends_with_the_job_cpu_time(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    script = textwrap.dedent(f"""
        import time
        from medmix.pipeline import setup_logging
        setup_logging({str(log)!r})
        end = time.process_time() + 0.3
        while time.process_time() < end:  # burn 0.3 s of CPU
            pass
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = log.read_text().splitlines()[-1]
    assert "INFO medmix: job CPU time" in last, last
    assert float(last.split("job CPU time")[1].split()[0]) >= 0.3


def test_extraction_logs_progress_while_it_runs(tmp_path: Path) -> None:
    """A long extraction writes progress lines (counts, rate, time left) to its job log as it goes,
    not only the summary at the end (the interval, 30 s in a job, is 0 here; 40 samples embedded in
    a first batch of 1, then chunks of 16)."""
    log = tmp_path / "job.log"
    script = textwrap.dedent(f"""
        import numpy as np
        from extractors import runner
        from extractors.base import Extractor
        from extractors.registry import ExpertSpec
        from medmix.pipeline import setup_logging

        class Echo(Extractor):
            spec = ExpertSpec(name="echo_progress_test", kinds=("tabular",), role="general", dim=2)

            def prepare(self, value):
                return float(value)

            def embed_batch(self, batch):
                return np.array([[v, 2 * v] for v in batch], np.float32)

            def sort_key(self, prepared):  # an expert that orders its batches is embedded in chunks
                return -prepared

        setup_logging({str(log)!r})
        runner.PROGRESS_LOG_SECONDS = 0.0
        runner.run_extraction(Echo({{"batch_size": 1}}), [f"s{{i}}" for i in range(40)], [str(i) for i in range(40)],
                              {str(tmp_path / "f.parquet")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = log.read_text().splitlines()
    progress = [ln for ln in lines if "INFO medmix.extract: expert echo_progress_test: " in ln and " left" in ln]
    assert [ln.split("echo_progress_test: ")[1].split(" in ")[0] for ln in progress] == [
        "1 of 40 samples (2%)", "17 of 40 samples (42%)", "33 of 40 samples (82%)"]  # 1 batch, then chunks of 16
    assert " samples/s, 00:00 left" in progress[0]
    summary = next(i for i, ln in enumerate(lines) if "40 samples: 40 present" in ln)
    assert lines.index(progress[-1]) < summary  # while it runs, before the closing summary
