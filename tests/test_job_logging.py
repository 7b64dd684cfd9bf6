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
