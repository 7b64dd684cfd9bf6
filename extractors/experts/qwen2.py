"""Qwen2 text experts: ``qwen2_05b`` (general, "Qwen2-0.5B") and ``qwen2_7b`` (teacher, "Qwen2-7B").

``Qwen/Qwen2-0.5B`` / ``Qwen/Qwen2-7B`` base models (``Qwen2Model`` via ``AutoModel``; no remote
code) with their own tokenizer, which adds no special tokens. Embedding = mean of the last hidden
states over the non-padding tokens (896 / 3584 dims, not normalised). Padding is on the right,
so with causal attention a token's state never sees padding. Notes up to 4096 tokens are one
window; longer ones are split into consecutive 4096-token windows (no overlap) pooled with
token weights, at most 8 windows (see :mod:`extractors.hf_text`). ``qwen2_7b`` loads its weights
in bf16 on CUDA (float32 on CPU); both run under bf16 autocast on CUDA.
"""

from __future__ import annotations

from extractors.hf_text import HFTextExpert
from extractors.registry import ExpertSpec, register_expert

PREPROCESSING = {
    "tokenizer": "AutoTokenizer (Qwen2 BPE), no special tokens",
    "window_tokens": 4096,
    "stride": 4096,
    "max_windows": 8,
    "padding_side": "right",
    "pooling": "mean over non-padding tokens, token-weighted over windows",
}


@register_expert(
    ExpertSpec(
        name="qwen2_05b",
        params=494_000_000,
        cost_note="≈0.49B (Qwen/Qwen2-0.5B model card, 494M on the hub); FLOPs not declared",
        kinds=("text",),
        role="general",
        dim=896,
        hub_id="Qwen/Qwen2-0.5B",
        # Hub commit seen as the cached snapshot of Qwen/Qwen2-0.5B in several public projects.
        revision="91d2aff3f957f99e4c74c962f2f408dcc88a18d8",
        preprocessing=PREPROCESSING,
        paper_name="Qwen2-0.5B",
        description="Qwen2-0.5B base, mean of last hidden states over non-padding tokens.",
        gpu=True,
        mem_mb=6000,
        gpu_mem_mb=4000,
        batch_sizes={"cpu": 4, "cuda": 32},
    )
)
class Qwen2Small(HFTextExpert):
    pass


@register_expert(
    ExpertSpec(
        name="qwen2_7b",
        cost_note="teacher (training only); not declared",
        kinds=("text",),
        role="teacher",
        dim=3584,
        hub_id="Qwen/Qwen2-7B",
        # Hub commit seen as the cached snapshot of Qwen/Qwen2-7B in several public projects.
        revision="453ed1575b739b5b03ce3758b23befdb0967f40e",
        preprocessing=PREPROCESSING,
        paper_name="Qwen2-7B",
        description="Qwen2-7B base (bf16 on CUDA), mean of last hidden states over non-padding tokens.",
        gpu=True,
        mem_mb=36000,
        gpu_mem_mb=20000,
        batch_sizes={"cpu": 1, "cuda": 8},
    )
)
class Qwen2Large(HFTextExpert):
    def model_dtype(self):
        import torch

        return torch.bfloat16 if self.on_cuda() else None
