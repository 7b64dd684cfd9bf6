"""Run one expert over one modality of one dataset and write its feature file.

Inputs are prepared (read + CPU preprocessing) in order, in DataLoader worker processes when
``settings.num_workers > 0`` so that reading overlaps embedding, and embedded in chunks: within a
chunk of ``CHUNK_BATCHES`` batches, batches are formed in ``sort_key`` order (e.g. by text
length) to limit padding, so memory stays bounded by one chunk of prepared inputs. The first
chunk is one batch, so the model starts while the workers prepare the next chunk. An expert that
does not order its inputs (no ``sort_key`` of its own: images, volumes) has nothing to gain from
a chunk and is embedded batch by batch, as soon as each batch is prepared: waiting for a chunk of
16 batches to fill left a weight-free expert's model idle for about a quarter of its run. Embeddings
do not depend on the batch composition (each expert guarantees it), so chunking changes nothing.

Bad input never stops the job by itself and never drops a sample: an :class:`InputError` from
``prepare`` (or any other ordinary exception from it, counted as "unexpected"), a batch whose
``embed_batch`` fails for one sample, or non-finite embeddings make that sample absent
(``present = false``) with the reason logged and counted in the per-expert summary line and the
file's metadata (``failed_reasons``: counts per reason category; ``failed_samples``: the reason
of each failed sample, naming its file). But if more than ``max_failed_fraction`` of the inputs present in the cohort
fail, the job raises :class:`ExtractionFailedError` and writes nothing: a cohort the expert
cannot read (e.g. series whose variables are not the dataset's) must not become a modality silently
recorded as absent. Errors that concern the machine or the whole expert are never recorded as
missing data and always fail the job (:func:`~extractors.base.is_fatal`: out of memory,
CUDA/cuDNN/cuBLAS errors, interrupts, missing weights; also wrong output shapes), from ``prepare``
(DataLoader workers send them back and the main process re-raises them) and from ``embed_batch``.

Progress: the job log gets a line (done, rate, time left) at most every
:data:`PROGRESS_LOG_SECONDS` while a job runs; an interactive terminal also shows a tqdm bar.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from extractors.base import ExtractionFailedError, Extractor, InputError, ModelUnavailableError, is_fatal
from extractors.inputs import is_missing
from medmix.store import hash_inputs, write_features

log = logging.getLogger("medmix.extract")

MISSING = "missing in cohort"
UNEXPECTED = "unexpected"
#: Batches per chunk of prepared inputs held in memory at once.
CHUNK_BATCHES = 16
#: Inputs a DataLoader worker prepares per task (fewer, larger messages between processes).
LOADER_BATCH = 32
#: Default of ``extraction.max_failed_fraction`` (config.yaml).
MAX_FAILED_FRACTION = 0.5
#: Example sample ids named in an :class:`ExtractionFailedError`.
N_EXAMPLES = 5
#: Failed samples whose reason the feature file's metadata records (``failed_samples``).
MAX_FAILED_LISTED = 1000
#: Seconds between two progress lines of an extraction in its job log.
PROGRESS_LOG_SECONDS = 30.0


class WorkerAbortError(RuntimeError):
    """A ``KeyboardInterrupt``/``SystemExit`` in a DataLoader worker, sent back to the main process.

    (A DataLoader worker sends exceptions back and the main process re-raises them with their type;
    an interrupt or exit would instead end the worker, with a less informative error.)
    """


class _Prepared:
    """Map-style dataset that prepares inputs (in DataLoader workers); input failures become reasons.

    Fatal errors (:func:`is_fatal`) propagate: in a DataLoader worker, the DataLoader sends them to
    the main process, which re-raises them from ``iter_prepared``.
    """

    def __init__(self, extractor: Extractor, values: list[Any]):
        self.extractor, self.values = extractor, values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            return i, self.extractor.prepare(self.values[i]), None
        except Exception as err:  # noqa: BLE001 - one odd input must not stop the whole job
            if is_fatal(err):
                raise
            if isinstance(err, InputError):
                return i, None, str(err)
            return i, None, f"{UNEXPECTED} {type(err).__name__} in prepare: {err}"
        except BaseException as err:  # KeyboardInterrupt, SystemExit: always fatal
            data = sys.modules.get("torch.utils.data")  # imported wherever a DataLoader runs
            if data is None or data.get_worker_info() is None:
                raise
            raise WorkerAbortError(f"{type(err).__name__} in prepare in a DataLoader worker: {err!r}") from err


def _collate(items):
    return items


def iter_prepared(
    extractor: Extractor, values: list[Any], num_workers: int = 0, prefetch: int = 2 * LOADER_BATCH
) -> Iterator[tuple[int, Any, str | None]]:
    """``(index, prepared or None, reason or None)`` for every value, in input order.

    With workers, up to about ``prefetch`` inputs are prepared ahead: the runner sets it to one
    chunk, so the workers keep preparing the next chunk while the model embeds the current one.
    """
    ds = _Prepared(extractor, values)
    if num_workers > 0 and len(values) > 1:
        from torch.utils.data import DataLoader

        workers = min(num_workers, len(values))
        loader = DataLoader(
            ds, batch_size=LOADER_BATCH, num_workers=workers, collate_fn=_collate,
            prefetch_factor=max(2, -(-prefetch // (LOADER_BATCH * workers))), persistent_workers=False,
        )
        for batch in loader:
            yield from batch
    else:
        for i in range(len(ds)):
            yield ds[i]


def prepare_all(extractor: Extractor, values: list[Any], num_workers: int = 0):
    """Prepared inputs (or ``None``) and failure reasons, in input order."""
    prepared: list[Any] = [None] * len(values)
    reasons: list[str | None] = [None] * len(values)
    for i, item, reason in iter_prepared(extractor, values, num_workers):
        prepared[i], reasons[i] = item, reason
    return prepared, reasons


class _ShapeError(RuntimeError):
    """``embed_batch`` returned the wrong shape: a bug of the expert, not of one input."""


def _embed_checked(extractor: Extractor, batch: list[Any]) -> np.ndarray:
    emb = np.asarray(extractor.embed_batch(batch), dtype=np.float32)
    if emb.shape != (len(batch), extractor.dim):
        raise _ShapeError(
            f"expert {extractor.spec.name!r} returned shape {emb.shape}, expected {(len(batch), extractor.dim)}"
        )
    return emb


def _embed_failure(err: Exception) -> str:
    prefix = "" if isinstance(err, InputError) else f"{UNEXPECTED} "
    return f"{prefix}{type(err).__name__} in embed: {err}"


def embed_items(
    extractor: Extractor, items: list[tuple[int, Any]], batch_size: int
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Embed ``(index, prepared)`` pairs in ``sort_key`` order; yields ``(index, row, reason)``.

    If a batch fails, its samples are retried one by one so only the offending ones are lost.
    Model-loading errors and wrong output shapes concern every sample and are raised.
    """
    items = sorted(items, key=lambda it: extractor.sort_key(it[1]))
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        try:
            emb = _embed_checked(extractor, [p for _, p in chunk])
            results = [(i, emb[k], None) for k, (i, _) in enumerate(chunk)]
        except (ModelUnavailableError, _ShapeError):
            raise
        except Exception as err:  # noqa: BLE001 - isolate the sample(s) that break the batch
            if is_fatal(err):  # out of memory, CUDA: never missing data
                raise
            if len(chunk) == 1:
                results = [(chunk[0][0], None, _embed_failure(err))]
            else:
                log.warning("expert %s: a batch of %d failed (%s: %s); embedding its samples one by one",
                            extractor.spec.name, len(chunk), type(err).__name__, err)
                results = list(embed_items(extractor, chunk, 1))
        for i, row, reason in results:
            if row is not None and not np.isfinite(row).all():
                yield i, None, "non-finite embedding"
            else:
                yield i, row, reason


def reason_category(reason: str) -> str:
    """A reason without its sample-specific parts (paths, numbers), for counting."""
    text = re.sub(r"\S*[/\\]\S*", "<path>", reason)
    text = re.sub(r"\d+(\.\d+)?", "#", text)
    return text[:160]


def _failure_error(
    name: str, meta: dict[str, Any], failed: list[tuple[str, str]], n_present: int,
    max_failed_fraction: float, out_path: str, all_unexpected: bool,
) -> ExtractionFailedError:
    """The one error of a job whose inputs mostly failed: what, how many, why, which, what to do."""
    where = ", ".join(f"{key} {meta[key]!r}" for key in ("dataset", "modality") if meta.get(key))
    categories = Counter(reason_category(r) for _, r in failed)
    top, n_top = categories.most_common(1)[0]
    example_reason = next(r for _, r in failed if reason_category(r) == top)
    examples = [sid for sid, r in failed if reason_category(r) == top][:N_EXAMPLES]
    others = "; ".join(f"{count}x {cat}" for cat, count in categories.most_common(4)[1:])
    if all_unexpected:
        verdict = "every input failed with an unexpected error (likely a bug in the expert, not bad input)"
        advice = "Fix the expert or its input."
    else:
        verdict = f"more than extraction.max_failed_fraction = {max_failed_fraction:g} allows"
        advice = (
            "Fix the input (does this modality match what the expert reads, e.g. its preprocessing?), or, "
            "to record these samples as absent and continue, raise extraction.max_failed_fraction in config.yaml."
        )
    return ExtractionFailedError(
        f"expert {name!r}" + (f" on {where}" if where else "") + f": {len(failed)} of {n_present} inputs "
        f"present in the cohort failed ({len(failed) / n_present:.0%}), {verdict}. "
        f"Commonest reason ({n_top} of {len(failed)}): {example_reason}"
        + (f" (other reasons: {others})" if others else "") + ". "
        f"Example samples: {', '.join(map(str, examples))}. "
        f"Nothing was written to {out_path}. {advice}"
    )


class _Progress:
    """How far one extraction is: a line in the job log (logger ``medmix.extract``, tqdm's counts,
    rate and time left) at most every :data:`PROGRESS_LOG_SECONDS`, and on an interactive terminal
    a tqdm bar as well (log lines are then written above it, not through it)."""

    def __init__(self, total: int, name: str):
        from tqdm import tqdm

        self.total, self.name, self.done = total, name, 0
        self.start = self.logged = time.monotonic()
        self._format = tqdm.format_meter
        self._stack = contextlib.ExitStack()
        interactive = sys.stderr.isatty() and total > 0
        self.bar = tqdm(total=total, desc=f"extract {name}", unit="sample", file=sys.stderr, dynamic_ncols=True,
                        mininterval=0.5, disable=not interactive)
        if interactive:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm())

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        now = time.monotonic()
        if self.done < self.total and now - self.logged >= PROGRESS_LOG_SECONDS:
            self.logged = now
            log.info("expert %s: %s", self.name, self._format(
                self.done, self.total, now - self.start, unit=" samples",
                bar_format="{n_fmt} of {total_fmt} samples ({percentage:.0f}%) in {elapsed}, {rate_noinv_fmt}, "
                           "{remaining} left"))

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self._stack.close()


def run_extraction(
    extractor: Extractor,
    sample_ids: list[str],
    values: list[Any],
    out_path: str,
    extra_metadata: dict[str, Any] | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
) -> dict[str, Any]:
    """Extract embeddings for ``values`` (``None``/NaN = modality absent) and write ``out_path``.

    Unusable inputs are recorded as absent with their reason logged; no sample is dropped. If more
    than ``max_failed_fraction`` of the inputs present in the cohort failed (or every one failed
    with an unexpected error), :class:`ExtractionFailedError` is raised and nothing is written.
    Returns a summary dict (counts, reason categories, timings, throughput).
    """
    if len(sample_ids) != len(values):
        raise ValueError(f"{len(sample_ids)} sample ids but {len(values)} values")
    if not 0.0 <= float(max_failed_fraction) <= 1.0:
        raise ValueError(f"max_failed_fraction must be in [0, 1], got {max_failed_fraction!r}")
    t0 = time.perf_counter()
    s = extractor.settings
    name = extractor.spec.name
    batch_size = max(1, int(s.batch_size))
    extractor.load()
    t_load = time.perf_counter()

    n = len(values)
    embeddings = np.zeros((n, extractor.dim), np.float32)
    present = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    present_idx = [i for i, v in enumerate(values) if not is_missing(v)]
    for i in set(range(n)) - set(present_idx):
        reasons[i] = MISSING
    seconds_embed = 0.0
    chunk_size = batch_size * CHUNK_BATCHES
    pending: list[tuple[int, Any]] = []
    next_chunk = batch_size  # the first chunk: one batch
    sorts = type(extractor).sort_key is not Extractor.sort_key

    def flush(bar) -> None:
        nonlocal seconds_embed, next_chunk
        next_chunk = chunk_size if sorts else batch_size
        t = time.perf_counter()
        for i, row, reason in embed_items(extractor, pending, batch_size):
            if row is None:
                reasons[i] = reason or "embedding failed"
            else:
                embeddings[i], present[i] = row, True
        seconds_embed += time.perf_counter() - t
        bar.update(len(pending))
        pending.clear()

    with _Progress(len(present_idx), name) as bar:
        sub_values = [values[i] for i in present_idx]
        for j, item, reason in iter_prepared(extractor, sub_values, int(s.num_workers), prefetch=chunk_size):
            i = present_idx[j]
            if item is None:
                reasons[i] = reason
                bar.update(1)
            else:
                pending.append((i, item))
                if len(pending) >= next_chunk:
                    flush(bar)
        if pending:
            flush(bar)
    t_done = time.perf_counter()

    failed = [(sample_ids[i], r) for i, r in enumerate(reasons) if r is not None and r != MISSING]
    if failed:
        all_unexpected = all(r.startswith(UNEXPECTED) for _, r in failed) and len(failed) == len(present_idx)
        if all_unexpected or len(failed) / len(present_idx) > max_failed_fraction:
            raise _failure_error(name, extra_metadata or {}, failed, len(present_idx), max_failed_fraction,
                                 out_path, all_unexpected)
    for sid, reason in failed:
        log.warning("expert %s: sample %s recorded as absent: %s", name, sid, reason)
    categories = Counter(reason_category(r) for _, r in failed)
    meta = {
        **extractor.metadata(),
        **(extra_metadata or {}),
        "input_hash": hash_inputs(sample_ids, values),
        "failed_reasons": dict(categories.most_common()),
        # Per sample (the first MAX_FAILED_LISTED; the job log lists every one).
        "failed_samples": dict(failed[:MAX_FAILED_LISTED]),
    }
    if len(failed) > MAX_FAILED_LISTED:
        meta["failed_samples_not_listed"] = len(failed) - MAX_FAILED_LISTED
    write_features(out_path, sample_ids, embeddings, present, meta)
    wall = time.perf_counter() - t0
    summary = {
        "expert": name,
        "n": n,
        "present": int(present.sum()),
        "missing": n - len(present_idx),
        "failed": len(failed),
        "failed_reasons": dict(categories.most_common()),
        "seconds_load": round(t_load - t0, 3),
        "seconds_embed": round(seconds_embed, 3),
        "seconds_total": round(wall, 3),
        "samples_per_second": round(len(present_idx) / max(t_done - t_load, 1e-9), 2),
    }
    reason_text = "; ".join(f"{count}x {cat}" for cat, count in categories.most_common(5)) or "none"
    log.info(
        "expert %s: %d samples: %d present, %d missing in cohort, %d failed (%s); "
        "load %.1fs, prepare+embed %.1fs (embed %.1fs), %.1f samples/s",
        name, n, summary["present"], summary["missing"], summary["failed"], reason_text,
        t_load - t0, t_done - t_load, seconds_embed, summary["samples_per_second"],
    )
    return summary
