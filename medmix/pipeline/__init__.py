"""Job bodies of the workflow's rules; the Snakemake scripts are thin adapters around them."""

from __future__ import annotations

import logging
import sys


def setup_logging(path: str | None) -> None:
    """Log to the rule's log file (and stderr) at INFO level."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))
