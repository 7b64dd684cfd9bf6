"""Stage 1 of the RAG experts (MedMIX Appendix B): turn each input into text.

- text (notes, reports): passes through unchanged;
- EHR time series: :func:`serialise_ehr`, ``variable_name: value; variable_name: value; ...``
  over every variable in a fixed field order (the series' column order, or a configured list),
  the value being the variable's **last observed** (non-missing) value in the series, numbers
  written with up to 6 significant digits (``%g``), text values stripped, and a variable with
  no observation written ``variable_name: missing``;
- chest X-rays: MAIRA-2 findings generation (:class:`Maira2Bridge`);
- CT volumes: Merlin radiology-report generation (:class:`MerlinBridge`);
- pathology slides: HistGen report generation (:class:`HistGenBridge`).

Generated reports are cached as Parquet (:func:`write_bridge`: ``sample_id``, ``input``,
``text``, ``present``, ``reason``) by the workflow's ``bridge`` rule, so reruns never regenerate
them. The report generators need large weights and a GPU; they cannot run in this project's CI
and raise :class:`~extractors.base.ModelUnavailableError` with instructions when unavailable.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extractors.base import InputError, ModelUnavailableError, fetch_hint, resolve_device
from extractors.hf_common import (
    check_remote_code_pin,
    hub_load_kwargs,
    load_state_complete,
    offline_mode,
    pretrained_complete,
)
from medmix.store.atomic import atomic_path
from medmix.store.inputs import TIME_COLUMNS

log = logging.getLogger("medmix.bridge")

BRIDGE_META_KEY = b"medmix_bridge"
#: The report generator used for each image-like modality kind (Appendix Table E1).
BRIDGE_FOR_KIND = {"image": "maira2", "volume": "merlin", "slide": "histgen"}


# ----------------------------------------------------------------------------- EHR
def _format_value(value: Any) -> str | None:
    """The printed form of one cell, or ``None`` if it is not an observation."""
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        v = float(value)
        return None if not np.isfinite(v) else f"{v:g}"
    text = str(value).strip()
    if not text or text.lower() in {"nan", "none", "null", "na", "n/a"}:
        return None
    try:
        v = float(text)
    except ValueError:
        return text
    return f"{v:g}" if np.isfinite(v) else None


def last_observed(frame, variables: list[str]) -> dict[str, str | None]:
    """Per variable, the printed last observed value in row order (``None`` if never observed)."""
    out: dict[str, str | None] = {}
    for name in variables:
        value = None
        if name in frame.columns:
            for cell in reversed(frame[name].tolist()):
                value = _format_value(cell)
                if value is not None:
                    break
        out[name] = value
    return out


def serialise_ehr(frame, variables: list[str] | None = None) -> str:
    """``name: value; name: value; ...`` over ``variables`` (default: the frame's columns, in order).

    Time columns (``time``, ``hour``, ``charttime``) are not variables. The value is the last
    observed one; a variable never observed (or absent from the frame) reads ``name: missing``.
    """
    names = list(variables) if variables is not None else [c for c in frame.columns
                                                           if str(c).strip().lower() not in TIME_COLUMNS]
    values = last_observed(frame, names)
    return "; ".join(f"{n}: {'missing' if v is None else v}" for n, v in values.items())


def read_series_table(path: str):
    """The raw series table (strings kept) of a CSV/Parquet file; time columns dropped."""
    import pandas as pd

    from extractors.inputs import read_timeseries, sort_by_time

    read_timeseries(path)  # validation: raises InputError for a missing, unreadable or empty series
    try:
        frame = (pd.read_parquet(path) if path.endswith(".parquet")
                 else pd.read_csv(path, dtype=str, keep_default_na=False))
    except Exception as err:  # noqa: BLE001 - any parser failure means unusable input
        raise InputError(f"unreadable time series {path}: {err}") from err
    return sort_by_time(frame, path)  # rows in time order, so "last" is the latest observation


# ----------------------------------------------------------------------------- cached text
def write_bridge(path: str | Path, sample_ids: list[str], inputs: list[Any], texts: list[str | None],
                 reasons: list[str | None], metadata: dict[str, Any]) -> None:
    """Atomically write bridged texts (``present`` false where ``text`` is None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    present = [t is not None for t in texts]
    table = pa.table({
        "sample_id": pa.array([str(s) for s in sample_ids], pa.string()),
        "input": pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v, sort_keys=True))
                           for v in inputs], pa.string()),
        "text": pa.array(texts, pa.string()),
        "present": pa.array(present, pa.bool_()),
        "reason": pa.array(reasons, pa.string()),
    })
    meta = {**metadata, "n": len(sample_ids), "n_present": int(sum(present))}
    table = table.replace_schema_metadata({BRIDGE_META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@dataclass
class BridgedText:
    """The bridged texts of one modality, looked up by the cohort cell (the input path)."""

    by_input: dict[str, tuple[str | None, str | None]]
    metadata: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> BridgedText:
        import pyarrow.parquet as pq

        if not os.path.exists(path):
            raise FileNotFoundError(f"bridged-text file {path} does not exist (run the bridge rule)")
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(BRIDGE_META_KEY)
        rows = table.to_pylist()
        by_input = {r["input"]: (r["text"] if r["present"] else None, r["reason"]) for r in rows
                    if r["input"] is not None}
        return cls(by_input, json.loads(raw) if raw else {})

    def text_for(self, value: Any) -> str:
        key = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if key not in self.by_input:
            raise InputError(f"no bridged report for input {key!r}; rerun the bridge rule for this cohort")
        text, reason = self.by_input[key]
        if text is None or not text.strip():
            raise InputError(f"no report could be generated for {key!r}: {reason or 'empty report'}")
        return text


# ----------------------------------------------------------------------------- generators
@dataclass
class BridgeSettings:
    model_id: str | None = None
    revision: str | None = None
    local_dir: str | None = None
    device: str = "auto"
    allow_remote_code: bool = False
    max_new_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


class ReportBridge:
    """A report generator: ``load`` once, then ``generate(value)`` per sample (InputError if unusable)."""

    name: str = ""
    kind: str = ""
    hub_id: str | None = None
    default_revision: str | None = None
    default_max_new_tokens: int = 300

    def __init__(self, settings: BridgeSettings | dict[str, Any] | None = None):
        s = settings if isinstance(settings, BridgeSettings) else BridgeSettings(**(settings or {}))
        s.model_id = s.model_id or self.hub_id
        s.revision = s.revision or self.default_revision
        s.max_new_tokens = int(s.max_new_tokens or self.default_max_new_tokens)
        self.settings = s
        self.device = "cpu"

    def load(self) -> None:
        raise NotImplementedError

    def generate(self, value: Any) -> str:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        s = self.settings
        return {"bridge": self.name, "kind": self.kind, "model_id": s.model_id, "revision": s.revision,
                "max_new_tokens": s.max_new_tokens}

    def source(self) -> str:
        s = self.settings
        offline_mode(s.options)  # the one online/offline rule (options.offline, else experts.offline)
        if s.local_dir:
            if not os.path.isdir(s.local_dir):
                raise ModelUnavailableError(f"bridge {self.name!r}: local_dir {s.local_dir!r} does not exist")
            return s.local_dir
        return str(s.model_id)

    def hub_kwargs(self, source: str) -> dict[str, Any]:
        """``revision`` / ``local_files_only`` for ``from_pretrained``
        (:func:`~extractors.hf_common.hub_load_kwargs`)."""
        s = self.settings
        return hub_load_kwargs(s.model_id, s.revision, source, f"bridge {self.name}", s.options,
                               f"rag.bridges.{self.name}.revision")


class Maira2Bridge(ReportBridge):
    """MAIRA-2 findings generation (model card of ``microsoft/maira-2``; non-grounded reporting).

    The model ships its own modelling/processing code, so it needs ``trust_remote_code``. That is
    granted only to this model id, only when the config sets ``allow_remote_code: true`` for this
    bridge, and only at an exact 40-hex commit (default: :attr:`default_revision`; override with
    ``rag.bridges.maira2.revision`` after reviewing its code); a ``local_dir`` must be the hub
    cache's ``snapshots/<that commit>/`` folder (:func:`~extractors.hf_common.check_remote_code_pin`). Inputs:
    ``{"frontal": path, "lateral": path | None}``; a lateral study without a frontal view is unusable (MAIRA-2
    requires the current frontal image). No indication/technique/comparison/prior is given.
    """

    name, kind, hub_id = "maira2", "image", "microsoft/maira-2"
    #: Hub commit seen as the cached snapshot of microsoft/maira-2 in public projects; review
    #: the remote code at this commit before allowing it.
    default_revision = "795a2b1cd4a310624b4e3d14b5a23e41fd273deb"

    def load(self) -> None:
        s = self.settings
        if s.model_id != self.hub_id:
            raise ModelUnavailableError(
                f"bridge maira2: trust_remote_code is granted only to {self.hub_id!r}, not {s.model_id!r}")
        if not s.allow_remote_code:
            raise ModelUnavailableError(
                "bridge maira2: microsoft/maira-2 runs its own code (trust_remote_code); allow it explicitly with "
                "rag.bridges.maira2.allow_remote_code: true (honoured for this model only)")
        # Exact 40-hex commit, for the hub and for local_dir (a .../snapshots/<commit>/ folder) alike.
        check_remote_code_pin("bridge maira2 (rag.bridges.maira2)", s.revision, s.local_dir)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoProcessor

            src = self.source()
            hub = self.hub_kwargs(src)
            self.device = resolve_device(s.device)
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            self._model = pretrained_complete(AutoModelForCausalLM, src, "bridge maira2", trust_remote_code=True,
                                              dtype=dtype, **hub)
            self._processor = AutoProcessor.from_pretrained(src, trust_remote_code=True, **hub)
        except (OSError, ValueError, ImportError) as err:
            raise ModelUnavailableError(
                f"bridge maira2: cannot load {s.model_id!r}@{s.revision!r} ({type(err).__name__}: {err}); it needs the "
                "weights in the HF cache (gated: accept the licence on https://huggingface.co/microsoft/maira-2 and "
                "set HF_TOKEN) and the transformers version its remote code supports (model card: transformers "
                f"4.46-4.51; use a separate environment). {fetch_hint('rag_medcpt_qwen2', 'rag.bridges.maira2')}"
            ) from err
        self._model = self._model.to(self.device).eval()

    def generate(self, value: Any) -> str:
        import torch

        from extractors.inputs import read_image

        if not isinstance(value, dict) or not value.get("frontal"):
            raise InputError("MAIRA-2 needs the current frontal view (no frontal image for this study)")
        frontal = read_image(value["frontal"])
        lateral = read_image(value["lateral"]) if value.get("lateral") else None
        processed = self._processor.format_and_preprocess_reporting_input(
            current_frontal=frontal, current_lateral=lateral, prior_frontal=None, indication=None,
            technique=None, comparison=None, prior_report=None, return_tensors="pt", get_grounding=False,
        ).to(self.device)
        with torch.inference_mode():
            output = self._model.generate(**processed, max_new_tokens=self.settings.max_new_tokens, use_cache=True)
        prompt_length = processed["input_ids"].shape[-1]
        decoded = self._processor.decode(output[0][prompt_length:], skip_special_tokens=True).lstrip()
        return str(self._processor.convert_output_to_plaintext_or_grounded_sequence(decoded)).strip()


class MerlinBridge(ReportBridge):
    """Merlin radiology-report generation for abdominal CT (``merlin-vlm``; Stanford MIMI).

    Follows the package's report-generation demo: ``Merlin(RadiologyReport=True)``, Merlin's own
    ``DataLoader`` preprocessing of a NIfTI volume, one greedy generation per organ system with
    the prompt ``"Generate a radiology report for {organ}###\\n"`` (``repetition_penalty=1.2``,
    ``max_new_tokens=128``, stop on token 48134), the text before ``###`` kept; the organ
    reports are joined as ``"{organ}: {text}"``. Weights (~25 GB, ``stanfordmimi/Merlin``) are
    fetched by the package; its version pins them.
    """

    name, kind, hub_id = "merlin", "volume", "stanfordmimi/Merlin"
    default_max_new_tokens = 128
    ORGANS = ("lower thorax", "liver", "gallbladder", "spleen", "pancreas", "adrenal glands", "kidneys",
              "bowel", "peritoneum", "pelvic", "circulatory", "lymph nodes", "musculoskeletal")
    EOS_SEQUENCE = (48134,)

    def load(self) -> None:
        try:
            from merlin import Merlin
            from merlin.data import DataLoader
        except ImportError as err:
            raise ModelUnavailableError(
                "bridge merlin: the `merlin-vlm` package is not installed (pip install merlin-vlm in its own "
                f"environment; report generation needs ~48 GB of GPU memory) ({err})") from err
        self.device = resolve_device(self.settings.device)
        self._loader_cls = DataLoader
        try:
            self._model = Merlin(RadiologyReport=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise ModelUnavailableError(f"bridge merlin: cannot load the report-generation weights ({err})") from err
        self._model.eval()
        self._model.to(self.device)

    def _stopping(self):
        from transformers import StoppingCriteria

        eos = list(self.EOS_SEQUENCE)

        class _EosList(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return eos in input_ids[:, -len(eos):].tolist()

        return [_EosList()]

    def generate(self, value: Any) -> str:
        import torch

        path = str(value)
        if not path.endswith((".nii", ".nii.gz")) or not os.path.isfile(path):
            raise InputError(f"Merlin report generation needs a NIfTI volume file; got {path!r}")
        from extractors.inputs import check_nifti_header

        try:
            check_nifti_header(path)  # Merlin's loader decodes the whole volume: bound it from the header first
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - a corrupt header is unusable input
            raise InputError(f"unreadable NIfTI header {path}: {type(err).__name__}: {err}") from err
        cache_dir = self.settings.options.get("cache_dir") or os.path.join(os.path.dirname(path), ".merlin_cache")
        loader = self._loader_cls(datalist=[{"image": path}], cache_dir=cache_dir, batchsize=1, shuffle=False,
                                  num_workers=0)
        batch = next(iter(loader))
        images = batch["image"].to(self.device)
        parts = []
        with torch.inference_mode():
            for organ in self.ORGANS:
                out = self._model.generate(
                    images, [f"Generate a radiology report for {organ}###\n"], do_sample=False, num_beams=1,
                    repetition_penalty=1.2, max_new_tokens=self.settings.max_new_tokens,
                    stopping_criteria=self._stopping(),
                )
                text = str(out[0]).split("###")[0].strip()
                if text:
                    parts.append(f"{organ}: {text}")
        return " ".join(parts)


class HistGenBridge(ReportBridge):
    """HistGen WSI report generation (Guo et al., MICCAI 2024; github.com/dddavid4real/HistGen).

    HistGen is not a package: put a checkout on ``PYTHONPATH`` (its top-level ``models`` and
    ``modules``), and set ``rag.bridges.histgen.options`` ``checkpoint`` (trained weights,
    loaded with ``weights_only=True``) and ``ann_path`` (the ``annotation.json`` its tokenizer
    builds the vocabulary from). The slide input must be the slide's DINOv2 ViT-L patch
    features (``.pt``, ``[N, 1024]``) from HistGen's CLAM pipeline. Hyper-parameters follow the
    repository's ``test_wsi_report.sh`` (beam 3, max length 100, region 96, top-k 512).
    """

    name, kind, hub_id = "histgen", "slide", "dddavid4real/HistGen"
    default_max_new_tokens = 100
    ARGS = dict(
        dataset_name="wsi_report", model_name="histgen", threshold=10, visual_extractor="resnet101",
        visual_extractor_pretrained=False, d_model=512, d_ff=512, d_vf=2048, num_heads=8, num_layers=3,
        dropout=0.1, logit_layers=1, bos_idx=0, eos_idx=0, pad_idx=0, use_bn=0, drop_prob_lm=0.5, topk=512,
        cmm_size=2048, cmm_dim=512, region_size=96, prototype_num=512, sample_method="beam_search",
        beam_size=3, temperature=1.0, sample_n=1, group_size=1, output_logsoftmax=1, decoding_constraint=0,
        block_trigrams=1, n_gpu=1,
    )

    def load(self) -> None:
        import argparse

        import torch

        opts = self.settings.options
        ckpt, ann = opts.get("checkpoint"), opts.get("ann_path")
        if not ckpt or not os.path.isfile(ckpt) or not ann or not os.path.isfile(ann):
            raise ModelUnavailableError(
                "bridge histgen: set rag.bridges.histgen.options.checkpoint and .ann_path to the HistGen checkpoint "
                f"and annotation.json (got checkpoint={ckpt!r}, ann_path={ann!r})")
        try:
            model_mod = importlib.import_module("models.histgen_model")
            tok_mod = importlib.import_module("modules.tokenizers")
        except ImportError as err:
            raise ModelUnavailableError(
                "bridge histgen: put a HistGen checkout (github.com/dddavid4real/HistGen) "
                f"on PYTHONPATH ({err})") from err
        args = argparse.Namespace(**{**self.ARGS, "max_seq_length": self.settings.max_new_tokens,
                                     "ann_path": ann, "image_dir": opts.get("image_dir", "dinov2_vitl")})
        self._tokenizer = tok_mod.Tokenizer(args)
        self._model = model_mod.HistGenModel(args, self._tokenizer)
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling refusals come as several error types
            raise ModelUnavailableError(f"bridge histgen: cannot load {ckpt} with weights_only=True ({err})") from err
        load_state_complete(self._model, state["state_dict"] if "state_dict" in state else state, "bridge histgen",
                            ckpt)
        self.device = resolve_device(self.settings.device)
        self._model = self._model.to(self.device).eval()

    def generate(self, value: Any) -> str:
        import torch

        path = str(value)
        if not path.endswith(".pt") or not os.path.isfile(path):
            raise InputError(f"HistGen needs the slide's DINOv2 patch features (.pt); got {path!r}")
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise InputError(f"unreadable patch features {path}: {err}") from err
        if not torch.is_tensor(feats) or feats.ndim != 2:
            raise InputError(f"patch features {path} must be a [N, D] tensor")
        with torch.inference_mode():
            out = self._model(feats.float().unsqueeze(0).to(self.device), mode="sample")
        return str(self._tokenizer.decode_batch(out.cpu().numpy())[0]).strip()


BRIDGES: dict[str, type[ReportBridge]] = {b.name: b for b in (Maira2Bridge, MerlinBridge, HistGenBridge)}


def create_bridge(name: str, settings: dict[str, Any] | None = None) -> ReportBridge:
    if name not in BRIDGES:
        raise KeyError(f"unknown bridge {name!r}; known: {sorted(BRIDGES)}")
    return BRIDGES[name](BridgeSettings(**(settings or {})))


def run_bridge(bridge: ReportBridge, sample_ids: list[str], values: list[Any], out_path: str | Path,
               keys: list[Any] | None = None) -> dict[str, Any]:
    """Generate a report per present value and cache them; unusable inputs are recorded as absent.

    ``keys`` are the cohort cells the extractor will look the text up by (default ``values``).
    The model is loaded only if at least one input is present.
    """
    keys = list(values) if keys is None else list(keys)
    texts: list[str | None] = [None] * len(values)
    reasons: list[str | None] = ["missing in cohort"] * len(values)
    if any(v is not None for v in values):
        bridge.load()
    for i, (sid, value) in enumerate(zip(sample_ids, values, strict=True)):
        if value is None:
            continue
        try:
            text = bridge.generate(value)
            if not text:
                raise InputError("the generator returned an empty report")
            texts[i], reasons[i] = text, None
        except InputError as err:
            reasons[i] = str(err)
            log.warning("sample %s: no report (%s)", sid, err)
    write_bridge(out_path, sample_ids, keys, texts, reasons, bridge.metadata())
    n_present = sum(t is not None for t in texts)
    return {"bridge": bridge.name, "n": len(values), "present": n_present,
            "failed": sum(1 for v, t in zip(values, texts, strict=True) if v is not None and t is None)}
