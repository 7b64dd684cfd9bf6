"""What a feature file holds and whether it is stale: the ``medmix cache`` reports (``ls``, ``show``).

A feature file, ``<cache>/<dataset>/features/<modality>/<expert>.parquet``, records in its metadata
what it was computed from (``extractors.job``, ``extractors.runner``): the expert's identity (model
id, revision, preprocessing; ``commit``, the hub commit a branch-like revision was read at), the
modality's kind, the fingerprints of the inputs read, of the ``local_dir`` weights and of the code
(:func:`expert_code_files`, the extraction rules' ``code`` input), ``max_failed_fraction``, and the
failed samples with their reasons. :func:`staleness` compares each with what the workflow computes
for the current config and checkout, with the workflow's own functions. A file is

- ``fresh``: every recorded fact equals the current one;
- ``stale``: some differ (the reasons say which); the next ``snakemake`` run re-extracts it;
- ``unused``: the config asks for no such file (another dataset, modality or committee);
- ``unchecked``: none differs, but some could not be compared (no input view yet; a fact that an
  older version did not record);
- ``unreadable``: the file fails its checksum or cannot be read (the store moved it aside).

Snakemake's own decision also weighs modification times (a code file touched but unchanged reruns
the job) and, for RAG experts, their retrieval index and the commits of their encoders; ``snakemake
-n`` remains the authority on what runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmix.plan.code_closure import REPO, closure_files
from medmix.plan.config import canonical_json, expert_identity, expert_runtime, extraction_jobs, reference_dataset
from medmix.store import FeatureStoreError, read_features, read_metadata
from medmix.store.checksum import CHECKSUM_KEY, CorruptFileError, read_schema
from medmix.store.inputs import InputView, folder_fingerprint, read_input_view, source_fingerprint

#: Where feature files lie below the cache folder (``results``).
FEATURE_GLOB = "*/features/*/*.parquet"
STATUSES = ("fresh", "stale", "unused", "unchecked", "unreadable")


def expert_code_files(expert: str) -> list[str]:
    """The code an extraction by ``expert`` depends on (the extraction rules' ``code`` input): the
    closure of its module's imports (:mod:`medmix.plan.code_closure`) and the other files it declares."""
    from extractors.registry import expert_module, extra_source_files

    return sorted({*closure_files(expert_module(expert)), *extra_source_files(expert)})


@dataclass
class Entry:
    """One feature file: where it is, what it records, and how it compares with the config."""

    path: Path
    dataset: str
    modality: str
    expert: str
    meta: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""
    error: str | None = None  # the file could not be read (corrupt: moved aside)
    status: str = "unchecked"
    reasons: list[str] = field(default_factory=list)  # what differs
    unchecked: list[str] = field(default_factory=list)  # what could not be compared, and why
    current: dict[str, Any] = field(default_factory=dict)  # the fingerprints now

    @property
    def failed(self) -> int:
        return int(sum((self.meta.get("failed_reasons") or {}).values()))


class CacheReport:
    """The feature files under ``cache`` compared with ``cfg`` (a validated config); the input views,
    code fingerprints and commits are computed once per dataset, expert or model."""

    def __init__(self, cfg: dict[str, Any], cache: str | Path = "results"):
        self.cfg, self.cache = cfg, Path(cache)
        self.jobs = set(extraction_jobs(cfg))
        self._views: dict[str, tuple[InputView | None, str]] = {}
        self._code: dict[str, str] = {}

    # ------------------------------------------------------------------------------ files
    def files(self) -> list[Path]:
        return sorted(self.cache.glob(FEATURE_GLOB))

    def find(self, target: str) -> list[Path]:
        """The files named by ``target``: a path, ``dataset/modality/expert`` or ``dataset/expert``."""
        path = Path(target)
        if path.suffix == ".parquet" or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"feature file {path} does not exist")
            return [path]
        parts = target.strip("/").split("/")
        if len(parts) == 3:
            found = [self.cache / parts[0] / "features" / parts[1] / f"{parts[2]}.parquet"]
        elif len(parts) == 2:
            found = sorted(self.cache.glob(f"{parts[0]}/features/*/{parts[1]}.parquet"))
        else:
            raise FileNotFoundError(f"{target!r}: name a feature file, <dataset>/<modality>/<expert> or "
                                    "<dataset>/<expert>")
        found = [p for p in found if p.is_file()]
        if not found:
            known = ", ".join("/".join(_place(p)) for p in self.files()[:20]) or "none"
            raise FileNotFoundError(f"no feature file {target!r} under {self.cache} (there: {known})")
        return found

    def entry(self, path: Path, full: bool = False) -> Entry:
        """The file's metadata (``full``: its values too, verified against the checksum) and status."""
        path = Path(path)
        e = Entry(path, *_place(path))
        try:
            e.meta = read_features(path).metadata if full else read_metadata(path)
            checked = CHECKSUM_KEY in (read_schema(path).metadata or {})
        except (FeatureStoreError, CorruptFileError, OSError) as err:
            e.error, e.status = str(err), "unreadable"
            return e
        e.dataset, e.modality = e.meta.get("dataset", e.dataset), e.meta.get("modality", e.modality)
        e.expert = e.meta.get("extractor", e.expert)
        what = "values and metadata" if full else "metadata and row count"
        e.checksum = f"{what} verified" if checked else "no checksum (written before checksums): read unverified"
        self.compare(e)
        return e

    # ------------------------------------------------------------------------- staleness
    def compare(self, e: Entry) -> None:
        """Set ``e.status``, ``e.reasons`` and ``e.unchecked`` (see the module docstring)."""
        if (e.dataset, e.modality, e.expert) not in self.jobs:
            e.status = "unused"
            e.reasons.append("the config asks for no such file (dataset, modality or committee not configured)")
            return
        ds = self.cfg["datasets"][e.dataset]
        ident = expert_identity(self.cfg, e.expert)
        runtime = expert_runtime(self.cfg, e.expert)
        facts = {key: ident[key] for key in ("model_id", "revision", "preprocessing")}
        facts["kind"] = ds["modalities"][e.modality]["kind"]
        facts["max_failed_fraction"] = float(self.cfg["extraction"]["max_failed_fraction"])
        facts["weights_fingerprint"] = folder_fingerprint(runtime.get("local_dir"))
        try:
            facts["commit"] = self._commit(e.expert, ident, runtime)
        except Exception as err:  # noqa: BLE001 - an expert that cannot be set up here: say so, go on
            e.unchecked.append(f"commit: the expert cannot be set up to resolve it ({type(err).__name__}: {err})")
        facts["code_fingerprint"] = self._code_fingerprint(e.expert)
        view, source = self._view(e.dataset)
        if view is None:
            e.unchecked.append(f"inputs: {source}")
        elif e.modality not in view.kinds:
            e.reasons.append(f"inputs: the input view ({source}) has no modality {e.modality!r}")
        else:
            facts["input_fingerprint"] = view.fingerprint(e.modality)
        e.current = facts
        for key, now in facts.items():
            if key == "commit":  # recorded only by hub experts: absent means none
                if canonical_json(e.meta.get("commit")) != canonical_json(now):
                    e.reasons.append(f"commit: read at {e.meta.get('commit') or '(none recorded)'}, now "
                                     f"{now or '(none: the revision is read as is)'}")
            elif key not in e.meta:
                e.unchecked.append(f"{key}: not recorded in the file (written by an older version)")
            elif canonical_json(e.meta[key]) != canonical_json(now):
                e.reasons.append(f"{FACTS[key]}: {_difference(e.meta[key], now)}"
                                 + (f" (inputs now: {source})" if key == "input_fingerprint" else ""))
        e.status = "stale" if e.reasons else "unchecked" if e.unchecked else "fresh"

    def _code_fingerprint(self, expert: str) -> str:
        if expert not in self._code:
            self._code[expert] = source_fingerprint(expert_code_files(expert), REPO)
        return self._code[expert]

    @staticmethod
    def _commit(expert: str, ident: dict[str, Any], runtime: dict[str, Any]) -> str | None:
        """The commit the expert's weights would be read at now (what its feature file records as
        ``commit``): the expert's own resolution (a pinned revision, the lock's commit, a snapshot)."""
        from extractors.registry import create_extractor

        settings = {**runtime, **{k: ident[k] for k in ("model_id", "revision", "preprocessing")}}
        resolve = getattr(create_extractor(expert, settings), "resolved_commit", None)
        return resolve() if resolve else None

    def _view(self, dataset: str) -> tuple[InputView | None, str]:
        """The input view extraction reads, as the workflow plans it: built from the dataset's source
        (the demo's is generated by the workflow: its view file), else the view file under the cache."""
        if dataset in self._views:
            return self._views[dataset]
        ds, note = self.cfg["datasets"][dataset], ""
        if ds["adapter"] != "demo":
            from medmix.datasets import build_cohort
            from medmix.datasets.schema import adopt_reference

            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)  # the cohort's warnings are prepare_dataset's to report
            try:
                cohort = build_cohort(dataset, ds, ".")
                reference = reference_dataset(self.cfg, dataset)
                if reference:
                    ref_view, ref_source = self._view(reference)
                    if ref_view is None:
                        raise ValueError(f"its reference dataset {reference!r}: {ref_source}")
                    cohort = adopt_reference(cohort, ref_view.schemas, reference)
                self._views[dataset] = (cohort.input_view(), "the dataset's source")
                return self._views[dataset]
            except Exception as err:  # noqa: BLE001 - as the workflow: fall back on the view file
                note = f"; the source does not build ({type(err).__name__}: {err})"
            finally:
                logging.disable(previous)
        path = self.cache / dataset / "inputs.parquet"
        if path.is_file():
            self._views[dataset] = (read_input_view(path), str(path))
        else:
            self._views[dataset] = (None, f"not compared: {path} does not exist (run snakemake){note}")
        return self._views[dataset]


#: What each compared fact is, as a reason names it.
FACTS = {
    "model_id": "model id", "revision": "revision", "preprocessing": "preprocessing", "kind": "modality kind",
    "max_failed_fraction": "extraction.max_failed_fraction",
    "weights_fingerprint": "local_dir weights (file names, sizes, mtimes)",
    "code_fingerprint": "code (the expert's import closure)",
    "input_fingerprint": "inputs (sample ids, values, input files' names, sizes and mtimes, input schema)",
}


def _difference(recorded: Any, now: Any) -> str:
    """``recorded X, now Y``; for two mappings, only the keys whose values differ."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        keys = sorted(k for k in {*recorded, *now} if canonical_json(recorded.get(k)) != canonical_json(now.get(k)))
        return "; ".join(f"{k} recorded {_short(recorded.get(k, '(unset)'))}, now {_short(now.get(k, '(unset)'))}"
                         for k in keys)
    return f"recorded {_short(recorded)}, now {_short(now)}"


def _place(path: Path) -> tuple[str, str, str]:
    """(dataset, modality, expert) of ``<dataset>/features/<modality>/<expert>.parquet`` ("?" if not so)."""
    parts = path.parts
    return (parts[-4] if len(parts) >= 4 else "?", parts[-2] if len(parts) >= 2 else "?", path.stem)


def _short(value: Any) -> str:
    text = canonical_json(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------- output
LS_COLUMNS = ("dataset", "modality", "expert", "role", "model", "revision", "dim", "rows", "present", "failed",
              "status")


def ls_row(e: Entry) -> dict[str, str]:
    m = e.meta
    if e.error:
        return {**dict.fromkeys(LS_COLUMNS, "?"), "dataset": e.dataset, "modality": e.modality, "expert": e.expert,
                "status": "unreadable"}
    n, present = int(m.get("n", 0)), int(m.get("n_present", 0))
    revision = str(m.get("revision") or "-")
    return {"dataset": e.dataset, "modality": e.modality, "expert": e.expert, "role": str(m.get("role", "?")),
            "model": str(m.get("model_id") or "-"), "revision": revision[:12] if len(revision) == 40 else revision,
            "dim": str(m.get("dim", "?")), "rows": str(n), "present": f"{present / n:.1%}" if n else "-",
            "failed": str(e.failed), "status": e.status}


def ls_lines(entries: list[Entry], cache: str, config: str) -> list[str]:
    """One line per feature file, in aligned columns under a header, then the count per status."""
    if not entries:
        return [f"no feature files under {cache} ({FEATURE_GLOB})"]
    rows = [dict(zip(LS_COLUMNS, LS_COLUMNS, strict=True)), *(ls_row(e) for e in entries)]
    widths = {c: max(len(r[c]) for r in rows) for c in LS_COLUMNS}
    lines = ["  ".join(r[c].ljust(widths[c]) for c in LS_COLUMNS).rstrip() for r in rows]
    counts = {s: n for s in STATUSES if (n := sum(r["status"] == s for r in rows[1:]))}
    why = "; `medmix cache show <dataset>/<modality>/<expert>` says why" if set(counts) - {"fresh"} else ""
    return [*lines, "", f"{len(entries)} feature files under {cache}, compared with {config}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items()) + why]


def show_lines(e: Entry) -> list[str]:
    """Everything the file records, the checksum status and the staleness verdict with its reasons."""
    if e.error:
        return [f"file: {e.path}", f"unreadable: {e.error}"]
    m, now = e.meta, e.current
    n, present = int(m.get("n", 0)), int(m.get("n_present", 0))
    commit = f" (read at commit {m['commit']})" if m.get("commit") else ""
    lines = [
        f"file: {e.path}",
        f"dataset: {e.dataset}   modality: {e.modality} ({m.get('kind', '?')})   shards: {m.get('shards', 1)}",
        f"expert: {e.expert}   role: {m.get('role', '?')}",
        f"model: {m.get('model_id') or '- (weight-free)'}   revision: {m.get('revision') or '-'}{commit}",
        f"preprocessing: {canonical_json(m.get('preprocessing', {}))}",
    ]
    if m.get("input_schema"):
        lines.append(f"input schema: {_short(m['input_schema'])}")
    failed = e.failed
    lines += [
        f"dim: {m.get('dim')}   rows: {n}   present: {present} ({present / n:.1%})" if n
        else f"dim: {m.get('dim')}   rows: 0",
        f"missing in the cohort: {n - present - failed}   failed: {failed}"
        f" (extraction.max_failed_fraction {m.get('max_failed_fraction', '?')})",
    ]
    listed = m.get("failed_samples") or {}
    if failed:
        lines.append("failed samples (sample: reason):")
        lines += [f"  {sid}: {reason}" for sid, reason in listed.items()]
        if m.get("failed_samples_not_listed"):
            lines.append(f"  ... {m['failed_samples_not_listed']} more (the extraction's log lists every one)")
        lines.append("failed reasons: " + "; ".join(f"{count}x {cat}" for cat, count in m["failed_reasons"].items()))
    lines.append("fingerprints (recorded; now):")
    for key, label in (("input_fingerprint", "input"), ("code_fingerprint", "code"),
                       ("weights_fingerprint", "weights")):
        rec = m.get(key)
        if rec is None:
            state = "not recorded"
        elif key not in now:
            state = "not compared"
        else:
            state = "same now" if rec == now[key] else f"now {now[key] or '(no local_dir)'}"
        lines.append(f"  {label}: {'(no local_dir)' if rec == '' else rec or '-'} ({state})")
    lines.append(f"  input hash: {m.get('input_hash', '-')}")
    lines.append(f"package version: {m.get('package_version', '?')}")
    lines.append(f"checksum: {e.checksum}")
    lines.append(f"status: {e.status}")
    lines += [f"  differs: {r}" for r in e.reasons]
    lines += [f"  not compared: {u}" for u in e.unchecked]
    return lines
