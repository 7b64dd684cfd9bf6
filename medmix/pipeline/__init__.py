"""Job bodies of the workflow's rules; the Snakemake scripts are thin adapters around them."""

from __future__ import annotations

import logging
import sys

#: Loggers of this project: INFO and above reach the job log.
OWN_LOGGERS = ("medmix", "extractors")


def setup_logging(path: str | None) -> None:
    """Log to the rule's log file (and stderr): this project's INFO messages, everyone else's warnings.

    Third-party INFO messages (e.g. faiss's loader trying AVX512 builds and printing
    ``ModuleNotFoundError(... swigfaiss_avx512)``) are noise that reads like a failure, so the root
    logger is at WARNING and only :data:`OWN_LOGGERS` log at INFO.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))
