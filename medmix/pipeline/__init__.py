"""Job bodies of the workflow's rules; the Snakemake scripts are thin adapters around them."""

from __future__ import annotations

import atexit
import logging
import sys

#: Loggers of this project: INFO and above reach the job log.
OWN_LOGGERS = ("medmix", "extractors")
#: Errors about the user's data or config: their message says what is wrong and where, so stderr
#: shows the message alone (the log file keeps the traceback). Named, not imported: this module
#: must not import stage 1.
USER_ERRORS = ("CohortError", "ConfigError", "FeatureStoreError", "ExtractionFailedError", "InputError",
               "CorruptFileError")


def setup_logging(path: str | None) -> None:
    """Log to the rule's log file (and stderr): this project's INFO messages, everyone else's warnings.

    Third-party INFO messages (e.g. faiss's loader trying AVX512 builds and printing
    ``ModuleNotFoundError(... swigfaiss_avx512)``) are noise that reads like a failure, so the root
    logger is at WARNING and only :data:`OWN_LOGGERS` log at INFO.

    An uncaught error of the job is logged as one ``ERROR`` line (``<type>: <message>``) to both,
    followed by its traceback in the log file; stderr gets the traceback too unless the error is
    one of :data:`USER_ERRORS`.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    file_handler = None
    if path:
        file_handler = logging.FileHandler(path, mode="w")
        handlers.append(file_handler)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)

    def excepthook(kind, err, tb) -> None:
        import traceback

        text = "".join(traceback.format_exception(kind, err, tb))
        logging.getLogger("medmix").error("job failed: %s: %s", kind.__name__, err)
        if file_handler is not None:
            file_handler.stream.write(text)
            file_handler.flush()
        if kind.__name__ not in USER_ERRORS:
            sys.stderr.write(text)

    sys.excepthook = excepthook
    atexit.unregister(_log_cpu_time)  # once per process, however often logging is set up
    atexit.register(_log_cpu_time)


#: The last line of a job log: the CPU time of the job's process from its start (interpreter,
#: imports and work; finished child processes included). ``tests/benchmarks/demo_split.py`` reads it.
CPU_LINE = "job CPU time"


def _log_cpu_time() -> None:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    logging.getLogger("medmix").info("%s %.2f s", CPU_LINE, seconds)


def set_threads(n: int) -> None:
    """Claim ``n`` of this host's CPU slots (:mod:`medmix.pipeline.cpu_slots`; waits while the
    other jobs use them all), then run torch with ``n`` intra-op threads.

    A job that has not imported torch does not import it here (2-2.5 s of CPU per job process: a
    weight-free expert never needs it); ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` then give a later
    import the same thread count."""
    import os

    from medmix.pipeline.cpu_slots import claim_cpus

    claim_cpus(n)
    n = max(1, int(n))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
