"""Deployment cost an expert declares (Table E6): parameter counts from published model configs.

Counts are exact where the architecture's config is known (:func:`bert_params`); FLOPs per
sample of a transformer encoder are approximated as ``2 × non-embedding parameters × tokens``
(one multiply-add per weight per token; the attention-score products ``QKᵀ``/``AV`` are not
counted).
"""

from __future__ import annotations

from typing import Any

#: all-MiniLM-L6-v2's BertModel config (sentence-transformers/all-MiniLM-L6-v2, config.json).
MINILM_L6_CONFIG = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536,
                    "max_position_embeddings": 512, "type_vocab_size": 2}


def bert_embedding_params(config: dict[str, Any]) -> int:
    """Word, position and token-type embeddings plus their LayerNorm."""
    h = config["hidden_size"]
    return (config["vocab_size"] + config["max_position_embeddings"] + config["type_vocab_size"]) * h + 2 * h


def bert_layer_params(config: dict[str, Any]) -> int:
    """One encoder layer: Q, K, V and output projections, the feed-forward pair, two LayerNorms."""
    h, i = config["hidden_size"], config["intermediate_size"]
    return 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h


def bert_params(config: dict[str, Any], pooler: bool = True) -> int:
    """Parameters of a ``transformers`` BertModel (with its pooler by default) from its config."""
    h = config["hidden_size"]
    layers = config["num_hidden_layers"] * bert_layer_params(config)
    return bert_embedding_params(config) + layers + ((h * h + h) if pooler else 0)


def encoder_flops_per_sample(config: dict[str, Any], tokens: int) -> float:
    """``2 × encoder-layer parameters × tokens`` (embedding look-ups and the pooler excluded)."""
    return 2.0 * config["num_hidden_layers"] * bert_layer_params(config) * tokens
