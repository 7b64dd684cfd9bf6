"""Tiny text models of real architectures, built locally with random weights (nothing downloaded):
BERT towers (MedCPT-like) and a Qwen2 of Qwen2-0.5B's width with one layer, saved like hub snapshots."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def words(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower())})


def tiny_bert(folder: Path, vocab: list[str], seed: int) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocab]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).eval().save_pretrained(folder)


def tiny_qwen2(folder: Path, vocab: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    folder.mkdir(parents=True)
    table = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *vocab])}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(folder)
    torch.manual_seed(7)
    cfg = Qwen2Config(vocab_size=len(table), hidden_size=896, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=64)
    Qwen2Model(cfg).eval().save_pretrained(folder)
