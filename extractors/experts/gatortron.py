"""``gatortron_base``: GatorTron-Base clinical text encoder (MedMIX Table E1, biomedical text expert).

``UFNLP/gatortron-base`` is a Megatron-BERT encoder (``MegatronBertModel``, native in
transformers, no remote code) with a 512-position limit and a BERT WordPiece tokenizer.

Casing (issue 18): the checkpoint is **cased** (its ``config.json`` says
``"tokenizer_type": "BertWordPieceCase"``, Megatron-LM's cased WordPiece), but the repository
ships only ``vocab.txt``, so ``AutoTokenizer`` alone falls back to ``BertTokenizer``'s
``do_lower_case=True`` and the model would see lower-cased text. The casing is read from the
config (preprocessing ``lowercase: from_config``, see :mod:`extractors.hf_text`), so text keeps
its case; the loaded tokenizer is checked to really keep it.

Pooling: mean of the last hidden states over all tokens of a window ([CLS] and [SEP] included,
padding excluded), not the [CLS] vector: GatorTron was pretrained with masked language modelling,
which trains no sentence-level summary into [CLS], and mean pooling is the usual choice for frozen
BERT-type features.

Long notes: windows of 510 word pieces (512 positions with [CLS] and [SEP]) every 384 word pieces
(128-piece overlap); the note embedding is the token-weighted mean over windows (see
:mod:`extractors.hf_text`); at most 32 windows (about 12,000 word pieces), evenly spaced beyond
that. 1024 dims, not normalised.
"""

from __future__ import annotations

from extractors.hf_text import HFTextExpert
from extractors.registry import ExpertSpec, register_expert

HUB_ID = "UFNLP/gatortron-base"
#: Hub commit seen as the cached snapshot of this repository in public projects.
REVISION = "78b867169b09bc34972c2c497aa323e94deb79d3"


@register_expert(
    ExpertSpec(
        name="gatortron_base",
        params=345_000_000,
        cost_note="≈345M (UFNLP/gatortron-base model card: Megatron-BERT 345M); FLOPs not declared",
        kinds=("text",),
        role="biomed",
        dim=1024,
        hub_id=HUB_ID,
        revision=REVISION,
        preprocessing={
            "tokenizer": "AutoTokenizer (BERT WordPiece)",
            "lowercase": "from_config",  # config.json tokenizer_type BertWordPieceCase -> cased
            "window_tokens": 510,
            "special_tokens": "[CLS] window [SEP]",
            "stride": 384,
            "max_windows": 32,
            "pooling": "mean over non-padding tokens, token-weighted over windows",
        },
        paper_name="GatorTron-B",
        description="GatorTron-Base (Megatron-BERT 345M) mean-pooled over 512-token windows.",
        gpu=True,
        mem_mb=4000,
        gpu_mem_mb=3000,
        batch_sizes={"cpu": 8, "cuda": 64},
    )
)
class GatorTronBase(HFTextExpert):
    def wrap_window(self, ids: list[int]) -> list[int]:
        tok = self.tokenizer
        return [tok.cls_token_id, *ids, tok.sep_token_id]
