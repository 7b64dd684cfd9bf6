"""Shared code of the Hugging Face text experts (GatorTron, Qwen2): windows and mean pooling.

A note is tokenised once without special tokens and cut into windows of at most
``window_tokens`` content tokens, starting every ``stride`` tokens (the last window ends at the
note's last token, so the whole note is covered; consecutive windows overlap by
``window_tokens - stride`` tokens). Each window gets the model's special tokens (subclasses say
which). The note embedding is the mean of the last hidden states over every non-padding token of
every window, i.e. the token-count-weighted mean of the window means (tokens in overlaps count
once per window). If a note needs more than ``max_windows`` windows, an evenly spaced subset of
them is used (deterministic; the number dropped is part of the documented rule, not an error).

Batching: notes are sorted by token count (``sort_key``), windows are padded on the right to the
longest window of their sub-batch of ``batch_size`` windows, and padding is masked out of both
attention and pooling, so a note's embedding does not depend on what it is batched with (up to
float rounding). ``torch.inference_mode`` throughout, bf16 autocast on CUDA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import InputError
from extractors.hf_common import HubExpert, dtype_kwargs
from extractors.inputs import read_text


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows covering ``n_tokens`` tokens (the last one ends at the end)."""
    if n_tokens <= window:
        return [0]
    starts = list(range(0, n_tokens - window + 1, stride))
    if starts[-1] + window < n_tokens:
        starts.append(n_tokens - window)
    return starts


def limit_windows(starts: list[int], max_windows: int) -> list[int]:
    """An evenly spaced subset of at most ``max_windows`` windows (first and last kept)."""
    if len(starts) <= max_windows:
        return starts
    picks = np.linspace(0, len(starts) - 1, max_windows).round().astype(int)
    return [starts[k] for k in picks]


class HFTextExpert(HubExpert):
    """Mean-pooled last hidden states of a Hugging Face encoder or decoder over token windows."""

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._tokenizer = None
        self._model = None

    # -- subclasses -----------------------------------------------------------------------
    def wrap_window(self, ids: list[int]) -> list[int]:
        """Add the model's special tokens around one window of content tokens."""
        return list(ids)

    def model_dtype(self):
        """The weights' dtype: float32 unless a subclass loads bf16 on CUDA."""
        return None

    # -- model ----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self.offline()  # before transformers / huggingface_hub are imported
            from transformers import AutoTokenizer

            tok = self.from_pretrained(AutoTokenizer)
            tok.padding_side = "right"
            self._tokenizer = tok
        return self._tokenizer

    def load(self) -> None:
        if self._model is not None:
            return
        self.offline()
        from transformers import AutoModel

        self.pick_device()
        model = self.load_weights(AutoModel, **dtype_kwargs(self.model_dtype()))
        hidden = getattr(model.config, "hidden_size", None)
        if hidden != self.dim:
            raise ValueError(f"expert {self.spec.name!r}: model hidden size {hidden} != declared dim {self.dim}")
        self._model = model.to(self.device).eval()
        _ = self.tokenizer  # fail here, not per sample, if the tokenizer files are missing

    # -- inputs ---------------------------------------------------------------------------
    def prepare(self, value: Any) -> list[list[int]]:
        """Token-id windows of the note, special tokens included."""
        text = read_text(value)
        pre = self.settings.preprocessing
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if not ids:
            raise InputError("text has no tokens")
        window, stride = int(pre["window_tokens"]), int(pre["stride"])
        starts = limit_windows(window_starts(len(ids), window, stride), int(pre["max_windows"]))
        return [self.wrap_window(ids[s : s + window]) for s in starts]

    def sort_key(self, prepared: list[list[int]]) -> int:
        return sum(len(w) for w in prepared)

    # -- embedding ------------------------------------------------------------------------
    def _pooled_sums(self, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per window: the sum of the last hidden states over its tokens, and its token count."""
        import torch

        width = max(len(w) for w in windows)
        pad_id = self.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else int(pad_id)
        ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        for k, w in enumerate(windows):
            ids[k, : len(w)] = torch.tensor(w, dtype=torch.long)
            mask[k, : len(w)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode(), self.autocast():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden.float()
        keep = mask.bool().unsqueeze(-1)
        sums = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
        return sums.cpu().numpy().astype(np.float64), mask.sum(1).cpu().numpy().astype(np.float64)

    def embed_batch(self, batch: list[list[list[int]]]) -> np.ndarray:
        self.load()
        windows = [w for doc in batch for w in doc]
        owner = np.repeat(np.arange(len(batch)), [len(doc) for doc in batch])
        sums = np.zeros((len(windows), self.dim), np.float64)
        counts = np.zeros(len(windows), np.float64)
        step = max(1, int(self.settings.batch_size))
        order = sorted(range(len(windows)), key=lambda k: len(windows[k]))
        for start in range(0, len(order), step):
            sel = order[start : start + step]
            sums[sel], counts[sel] = self._pooled_sums([windows[k] for k in sel])
        out = np.zeros((len(batch), self.dim), np.float64)
        np.add.at(out, owner, sums)
        total = np.bincount(owner, weights=counts, minlength=len(batch))
        return (out / np.maximum(total, 1.0)[:, None]).astype(np.float32)
