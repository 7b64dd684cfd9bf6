"""``moirai``: MOIRAI time-series encoder (MedMIX Table E1, biomedical EHR expert), own environment.

``Salesforce/moirai-1.0-R-small`` (d_model 384) through uni2ts's ``MoiraiModule.from_pretrained``, from
``model.safetensors`` only (never unpickled: the env has torch<2.5) and with every tensor required.
uni2ts pins ``torch<2.5`` / ``numpy~=1.26`` and cannot be installed in the main environment, so
this expert declares ``environment="moirai"``: its model code lives in the standalone
:mod:`extractors.moirai_worker` script, run by the Python of the env created from
``workflow/envs/moirai.yaml``. The three steps (the workflow wires them):

1. main env: :func:`export_series` prepares the cohort's series (same reader and checks as every
   time-series expert) into ``series.npz``;
2. moirai env: ``python extractors/moirai_worker.py --input series.npz --output emb.npz --model ...``;
3. main env: :func:`write_worker_features` writes the feature Parquet (absent samples included).

Loaded in a Python where uni2ts is importable, the extractor also runs in-process through
:func:`extractors.runner.run_extraction` (same worker functions). Elsewhere :meth:`Moirai.load`
fails at once with :class:`ModelUnavailableError` explaining how to create the environment.

Rule (documented preprocessing): the sample's V variables form one multivariate MOIRAI input
(any-variate attention), patches of ``patch_size`` steps chosen from the series' sampling
frequency (below), the last 512 steps, NaN = missing (observed mask 0, value 0: MOIRAI's own missing-value handling);
embedding = mean of the encoder representations over every (variate, patch) token with at
least one observed value -> 384 dims, not normalised. Tested end to end on a tiny random-weight
``MoiraiModule`` (uni2ts 2.0.0's real code, installed for the tests beside the main env's torch):
against ``MoiraiModule.forward`` on hand-packed samples, and through the three workflow rules.

Patch size (issue 18): MOIRAI was pretrained with a patch size drawn per series from a range
that depends on the series' frequency (uni2ts 2.0.0 ``uni2ts/transform/patch.py``,
``DefaultPatchSizeConstraints.DEFAULT_RANGES``, copied in :data:`PATCH_SIZE_RANGES`: hourly 32-64,
minutely 32-128, daily/weekly 16-32, monthly 8-32, ...); patch 8 was only ever used for monthly or
slower data. Preprocessing ``frequency`` (pandas alias, default ``"H"``: the EHR tables are hourly)
and ``patch_size`` (``"auto"`` by default, or an explicit size) give the patch size by
:func:`resolve_patch_size`: ``auto`` = the smallest of the model's patch sizes (8, 16, 32, 64, 128)
inside the frequency's range (hourly -> 32: the finest time resolution the model saw for hourly
data); an explicit size outside the range is refused unless ``patch_size_check: false``. The
resolved size is recorded in the feature metadata (``patch_size_resolved``) and passed to the
worker.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from extractors.base import ModelUnavailableError
from extractors.hf_common import LOAD_ERRORS, HubExpert, locked_commit, raise_unless_missing
from extractors.registry import ExpertSpec, register_expert
from extractors.series import expected_variables
from extractors.ts_foundation import prepare_series, right_aligned

log = logging.getLogger("medmix.extract")

#: uni2ts 2.0.0 ``DefaultPatchSizeConstraints.DEFAULT_RANGES`` (inclusive) per normalised frequency.
PATCH_SIZE_RANGES = {
    "S": (64, 128), "T": (32, 128), "H": (32, 64), "D": (16, 32), "B": (16, 32), "W": (16, 32),
    "M": (8, 32), "Q": (1, 8), "Y": (1, 8), "A": (1, 8),
}
#: Patch sizes of the MOIRAI 1.0-R checkpoints (``MoiraiModule.patch_sizes``).
MODEL_PATCH_SIZES = (8, 16, 32, 64, 128)
_FREQ_ALIASES = {"min": "T", "ME": "M", "MS": "M", "QE": "Q", "QS": "Q", "YE": "Y", "YS": "Y", "AS": "A",
                 "BME": "M", "BMS": "M", "h": "H", "s": "S", "d": "D", "w": "W", "t": "T"}


def normalise_frequency(freq: str) -> str:
    """A pandas offset alias (``"H"``, ``"1h"``, ``"15min"``, ``"W-SUN"``) -> uni2ts's key (``H``, ``T``, ``W``)."""
    import re

    m = re.fullmatch(r"\s*\d*\s*([A-Za-z]+)(?:-[A-Za-z]+)?\s*", str(freq))
    if not m:
        raise ValueError(f"unrecognised frequency {freq!r} (a pandas offset alias such as 'H', '15min', 'D')")
    name = m.group(1)
    key = _FREQ_ALIASES.get(name, name.upper() if name.upper() in PATCH_SIZE_RANGES else name)
    if key not in PATCH_SIZE_RANGES:
        raise ValueError(f"frequency {freq!r}: no MOIRAI patch-size range for {key!r} (known: "
                         f"{sorted(PATCH_SIZE_RANGES)})")
    return key


def resolve_patch_size(pre: dict[str, Any], model_patch_sizes: tuple[int, ...] = MODEL_PATCH_SIZES) -> int:
    """The patch size for the preprocessing settings (see the module docstring)."""
    lo, hi = PATCH_SIZE_RANGES[normalise_frequency(pre.get("frequency", "H"))]
    allowed = [p for p in model_patch_sizes if lo <= p <= hi]
    setting = pre.get("patch_size", "auto")
    if setting == "auto":
        if not allowed:
            raise ValueError(f"no model patch size {model_patch_sizes} within {lo}-{hi} for frequency "
                             f"{pre.get('frequency')!r}")
        return min(allowed)
    size = int(setting)
    if pre.get("patch_size_check", True) and not lo <= size <= hi:
        raise ValueError(f"patch_size {size} is outside MOIRAI's pretraining range {lo}-{hi} for frequency "
                         f"{pre.get('frequency', 'H')!r} (uni2ts DefaultPatchSizeConstraints); use 'auto' or set "
                         "patch_size_check: false")
    return size


ENV_FILE = "workflow/envs/moirai.yaml"
ENV_HELP = (
    "expert 'moirai' needs uni2ts, which pins torch<2.5 and cannot share the main environment. Create its "
    f"environment with `conda env create -f {ENV_FILE}` (Snakemake does this with --use-conda for the rule "
    "declaring that env) and run `python extractors/moirai_worker.py --input series.npz --output emb.npz "
    "--model Salesforce/moirai-1.0-R-small` there (see extractors/experts/moirai.py), or use the demo profile."
)


@register_expert(
    ExpertSpec(
        name="moirai",
        params=14_000_000,
        cost_note="≈14M (MOIRAI-small, Salesforce/moirai-1.0-R-small model card / paper); FLOPs not declared",
        kinds=("timeseries",),
        role="biomed",
        dim=384,
        hub_id="Salesforce/moirai-1.0-R-small",
        # No verifiable commit sha was found for this repository: "main" resolves through the lock
        # (`medmix fetch` records the commit it downloads in medmix.lock.json), or pin
        # experts.settings.moirai.revision to a 40-hex commit.
        revision="main",
        preprocessing={
            "input": "one multivariate series per sample (variables = variates)",
            "frequency": "H",  # hourly EHR rows
            "patch_size": "auto",  # uni2ts DefaultPatchSizeConstraints: hourly -> 32..64; auto = 32
            "max_time_steps": 512,
            "missing": "NaN -> observed_mask 0 (MOIRAI native)",
            "pooling": "mean over (variate, patch) tokens with an observation",
        },
        paper_name="MOIRAI",
        description="MOIRAI-1.0-R-small encoder representations, mean over observed tokens (own conda env).",
        gpu=True,
        mem_mb=3000,
        gpu_mem_mb=3000,
        batch_sizes={"cpu": 16, "cuda": 128},
        environment="moirai",
    )
)
class Moirai(HubExpert):
    extra_sources = ("moirai_worker.py",)  # run as a script in its own environment, never imported
    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._module = None

    def patch_size(self) -> int:
        """The resolved patch size (frequency-constrained, see the module docstring)."""
        return resolve_patch_size(self.settings.preprocessing)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "patch_size_resolved": self.patch_size()}

    def load(self) -> None:
        if self._module is not None:
            return
        offline = self.offline()  # before uni2ts imports huggingface_hub
        try:
            import uni2ts  # noqa: F401
        except ImportError as err:
            raise ModelUnavailableError(ENV_HELP) from err
        from extractors import moirai_worker

        self.pick_device()
        try:
            source = self.model_source()
            revision = self.hub_revision(source)
            self._module = moirai_worker.load_module(source, revision, offline)
        except LOAD_ERRORS as err:
            raise_unless_missing(err)
            raise self.unavailable(err) from err

    def prepare(self, value: Any) -> np.ndarray:
        return prepare_series(value, expected_variables(self.settings))

    def sort_key(self, prepared: np.ndarray) -> int:
        return int(prepared.shape[0])

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        from extractors import moirai_worker

        self.load()
        pre = self.settings.preprocessing
        values, lengths = right_aligned(batch)
        return moirai_worker.embed_series(
            self._module, values, lengths, self.patch_size(), int(pre["max_time_steps"]),
            max(1, int(self.settings.batch_size)), self.device,
        )

    def worker_args(self) -> list[str]:
        """Command-line arguments of ``moirai_worker.py`` matching this extractor's settings."""
        pre, source = self.settings.preprocessing, self.model_source()
        args = ["--model", source, "--patch-size", str(self.patch_size()), "--max-time-steps",
                str(pre["max_time_steps"]), "--batch-size", str(self.settings.batch_size),
                "--device", self.settings.device]
        if not os.path.isdir(source) and self.settings.revision:
            # a branch-like revision -> the commit medmix.lock.json recorded for it (its change reruns the
            # worker through this rule param); warned about in the job, not on every workflow parse
            s = self.settings
            args += ["--revision", locked_commit(s.model_id, s.revision) or s.revision]
        if self.offline():
            args.append("--local-files-only")
        return args


def export_series(extractor: Moirai, sample_ids: list[str], values: list[Any], out_npz: str) -> dict[str, str]:
    """Step 1 (main env): prepare every present input and write the worker's ``series.npz``.

    Returns ``{sample_id: reason}`` of the unusable inputs (logged; they become absent rows).
    """
    from extractors.runner import prepare_all
    from medmix.store.atomic import atomic_path

    present = [i for i, v in enumerate(values) if v is not None]
    prepared, reasons = prepare_all(extractor, [values[i] for i in present], extractor.settings.num_workers)
    ok = [(sample_ids[i], p) for i, p in zip(present, prepared, strict=True) if p is not None]
    failed = {sample_ids[i]: r for i, r in zip(present, reasons, strict=True) if r is not None}
    for sid, reason in failed.items():
        log.warning("sample %s recorded as absent: %s", sid, reason)
    if ok:
        arr, lengths = right_aligned([p for _, p in ok])
    else:
        arr, lengths = np.zeros((0, 1, 1), np.float32), np.zeros(0, np.int64)
    with atomic_path(out_npz) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, sample_ids=np.array([s for s, _ in ok], dtype=str), values=arr, lengths=lengths)
    return failed


def write_worker_features(
    extractor: Moirai, sample_ids: list[str], values: list[Any], embeddings_npz: str, out_path: str,
    extra_metadata: dict[str, Any] | None = None,
) -> int:
    """Step 3 (main env): the feature Parquet from the worker's ``embeddings.npz``; returns #present."""
    from medmix.store import hash_inputs, write_features

    with np.load(embeddings_npz, allow_pickle=False) as data:
        ids, emb = [str(s) for s in data["sample_ids"]], np.asarray(data["embeddings"], np.float32)
    if emb.ndim != 2 or (len(ids) and emb.shape[1] != extractor.dim):
        raise ValueError(f"{embeddings_npz}: embeddings {emb.shape}, expected [n, {extractor.dim}]")
    unknown = set(ids) - set(sample_ids)
    if unknown:
        raise ValueError(f"{embeddings_npz}: sample ids not in the cohort: {sorted(unknown)[:5]}")
    row = {sid: k for k, sid in enumerate(ids)}
    out = np.zeros((len(sample_ids), extractor.dim), np.float32)
    present = np.zeros(len(sample_ids), bool)
    non_finite = []
    for i, sid in enumerate(sample_ids):
        if sid in row:
            if np.isfinite(emb[row[sid]]).all():
                out[i], present[i] = emb[row[sid]], True
            else:
                non_finite.append(sid)
                log.warning("sample %s recorded as absent: non-finite embedding", sid)
    meta = {**extractor.metadata(), **(extra_metadata or {}), "input_hash": hash_inputs(sample_ids, values)}
    if non_finite:
        meta["failed_reasons"] = {"non-finite embedding": len(non_finite)}
    write_features(out_path, sample_ids, out, present, meta)
    return int(present.sum())
