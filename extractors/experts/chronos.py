"""Chronos experts: ``chronos_small`` (general, "Chronos-S") and ``chronos_large`` (teacher, "Chronos-L").

``amazon/chronos-t5-small`` / ``amazon/chronos-t5-large`` loaded as chronos-forecasting's
``ChronosPipeline.from_pretrained`` does (spelled out, so that a checkpoint missing a tensor is
refused) (T5 encoder-decoder; bf16 on CUDA as the model card shows, float32 on CPU) and embedded with its documented
``ChronosPipeline.embed`` API, which
applies Chronos's own tokenisation (mean scaling by the mean absolute observed value, uniform
bins in [-15, 15], EOS token appended) and returns the encoder's last hidden states.

Rule (documented preprocessing):

* each of the sample's V variables (MedMIX: 46 EHR variables) is one univariate series;
* missing measurements stay NaN: Chronos treats NaN as missing (pad token, attention mask 0,
  excluded from the scale) - no imputation; series of different lengths are left-padded with
  NaN, as ``ChronosPipeline.embed`` documents; only the last ``context_length`` (512) steps are used;
* per variable: mean of the encoder states over the observed time steps (the EOS position and
  missing/padded steps excluded);
* per sample: mean over the variables with at least one observed value, so the dimension is
  fixed (d_model: 512 small, 1024 large) whatever the number of variables; not normalised.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.hf_common import HubExpert, dtype_kwargs
from extractors.registry import ExpertSpec, register_expert
from extractors.series import expected_variables
from extractors.ts_foundation import prepare_series

PREPROCESSING = {
    "series": "one univariate series per variable",
    "missing": "NaN = missing (Chronos pad token / attention mask)",
    "tokenizer": "Chronos MeanScaleUniformBins (model config)",
    "context_length": 512,
    "time_pooling": "mean over observed steps, EOS excluded",
    "variable_pooling": "mean over variables with an observation",
}


class ChronosExpert(HubExpert):
    """Chronos (T5) encoder embedding pooled over observed time steps, then over variables."""

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._pipeline = None

    def load(self) -> None:
        if self._pipeline is not None:
            return
        self.offline()
        from chronos import ChronosConfig, ChronosModel, ChronosPipeline
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        self.pick_device()
        import torch

        # ChronosPipeline.from_pretrained, spelled out so that the T5 weights go through
        # load_weights: a checkpoint missing any tensor is refused instead of left random.
        config = self.from_pretrained(AutoConfig)
        pipeline_class = getattr(config, "chronos_pipeline_class", "ChronosPipeline")
        chronos_config = getattr(config, "chronos_config", None)
        if not isinstance(chronos_config, dict):
            raise self.unavailable(ValueError(f"{self.model_source()} has no chronos_config: not a Chronos model"))
        chronos_config = ChronosConfig(**chronos_config)
        if pipeline_class != "ChronosPipeline" or chronos_config.model_type != "seq2seq":
            raise ValueError(
                f"expert {self.spec.name!r}: {self.model_source()} is a {pipeline_class} "
                f"({chronos_config.model_type}), not an original Chronos (T5) model; its embedding API differs"
            )
        dtype = torch.bfloat16 if self.on_cuda() else torch.float32
        inner = self.load_weights(AutoModelForSeq2SeqLM, **dtype_kwargs(dtype))
        pipeline = ChronosPipeline(tokenizer=chronos_config.create_tokenizer(),
                                   model=ChronosModel(config=chronos_config, model=inner))
        d_model = pipeline.model.model.config.d_model
        if d_model != self.dim:
            raise ValueError(f"expert {self.spec.name!r}: model d_model {d_model} != declared dim {self.dim}")
        pipeline.model.model.to(self.device).eval()
        self._pipeline = pipeline

    def prepare(self, value: Any) -> np.ndarray:
        return prepare_series(value, expected_variables(self.settings))

    def sort_key(self, prepared: np.ndarray) -> int:
        return int(prepared.shape[0])

    def _series_means(self, series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per univariate series: mean encoder state over its observed steps, and that step count."""
        import torch

        pipe = self._pipeline
        # Left padding with NaN aligns series of different lengths (ChronosPipeline.embed's documented input).
        width = min(max(len(s) for s in series), int(pipe.model.config.context_length))
        context = torch.full((len(series), width), float("nan"), dtype=torch.float32)
        for k, s in enumerate(series):
            tail = torch.from_numpy(s[-width:])
            context[k, width - len(tail) :] = tail
        with torch.inference_mode(), self.autocast():
            states, _ = pipe.embed(context)
        states = states.float()[:, : context.shape[-1]]  # drop the EOS position
        observed = ~torch.isnan(context)
        zero = torch.zeros((), dtype=states.dtype)
        sums = torch.where(observed.unsqueeze(-1), states, zero).sum(1)
        counts = observed.sum(1)
        means = sums / counts.clamp(min=1).unsqueeze(-1)
        return means.numpy().astype(np.float64), counts.numpy()

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        self.load()
        series = [np.ascontiguousarray(x[:, v]) for x in batch for v in range(x.shape[1])]
        owner = np.repeat(np.arange(len(batch)), [x.shape[1] for x in batch])
        means = np.zeros((len(series), self.dim), np.float64)
        counts = np.zeros(len(series), np.int64)
        step = max(1, int(self.settings.options.get("series_per_forward", 256)))
        for start in range(0, len(series), step):
            means[start : start + step], counts[start : start + step] = self._series_means(series[start : start + step])
        used = counts > 0
        total = np.zeros((len(batch), self.dim), np.float64)
        np.add.at(total, owner[used], means[used])
        n_used = np.bincount(owner[used], minlength=len(batch))
        if (n_used == 0).any():
            raise RuntimeError(f"expert {self.spec.name!r}: a prepared series has no observed value")
        return (total / n_used[:, None]).astype(np.float32)


@register_expert(
    ExpertSpec(
        name="chronos_small",
        params=46_000_000,
        cost_note=("≈46M (amazon/chronos-t5-small model card; the whole T5, of which only the encoder runs: "
                   "an upper bound); FLOPs not declared"),
        kinds=("timeseries",),
        role="general",
        dim=512,
        hub_id="amazon/chronos-t5-small",
        # Hub commit seen as the cached snapshot of amazon/chronos-t5-small in public projects.
        revision="476a71b73e6205f7987e811a81f355b9791c9256",
        preprocessing=PREPROCESSING,
        paper_name="Chronos-S",
        description="Chronos-T5-Small encoder states, mean over observed steps then over variables.",
        gpu=True,
        mem_mb=3000,
        gpu_mem_mb=2000,
        batch_sizes={"cpu": 32, "cuda": 256},
    )
)
class ChronosSmall(ChronosExpert):
    pass


@register_expert(
    ExpertSpec(
        name="chronos_large",
        params=710_000_000,
        cost_note="≈710M (amazon/chronos-t5-large model card; whole T5, encoder only runs); FLOPs not declared",
        kinds=("timeseries",),
        role="teacher",
        dim=1024,
        hub_id="amazon/chronos-t5-large",
        # No verifiable commit sha was found for this repository: "main" resolves through the lock
        # (`medmix fetch` records the commit it downloads in medmix.lock.json), or pin
        # experts.settings.chronos_large.revision to a 40-hex commit.
        revision="main",
        preprocessing=PREPROCESSING,
        paper_name="Chronos-L",
        description="Chronos-T5-Large encoder states (teacher), mean over observed steps then over variables.",
        gpu=True,
        mem_mb=8000,
        gpu_mem_mb=6000,
        batch_sizes={"cpu": 8, "cuda": 64},
    )
)
class ChronosLarge(ChronosExpert):
    pass
