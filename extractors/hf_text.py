"""Shared code of the Hugging Face text experts (GatorTron, Qwen2): windows and mean pooling.

A note is tokenised once without special tokens and cut into windows of at most
``window_tokens`` content tokens, starting every ``stride`` tokens (the last window ends at the
note's last token, so the whole note is covered; consecutive windows overlap by
``window_tokens - stride`` tokens). Each window gets the model's special tokens (subclasses say
which). The note embedding is the mean of the last hidden states over every non-padding token of
every window, i.e. the token-count-weighted mean of the window means (tokens in overlaps count
once per window). If a note needs more than ``max_windows`` windows, an evenly spaced subset of
them is used (deterministic; the number dropped is part of the documented rule, not an error).

Casing (issue 18): taken from the model's config, never from the tokenizer's fallback. A
repository that ships only ``vocab.txt`` (GatorTron) gets ``BertTokenizer``'s default
``do_lower_case=True`` from ``AutoTokenizer``, even when the checkpoint is cased. The preprocessing
setting ``lowercase`` is ``"from_config"`` (read Megatron's ``tokenizer_type`` from
``config.json``: ``BertWordPieceCase`` -> cased, ``BertWordPieceLowerCase`` -> lower-cased;
:func:`config_lowercase`), or an explicit ``true``/``false``; the resolved value is passed to the
tokenizer as ``do_lower_case`` and checked on the loaded tokenizer (a tokenizer that still changes
case fails the job). A config that states nothing leaves the tokenizer as shipped (Qwen2).

Batching: notes are sorted by token count (``sort_key``), windows are padded on the right to the
longest window of their sub-batch of ``batch_size`` windows, and padding is masked out of both
attention and pooling, so a note's embedding does not depend on what it is batched with (up to
float rounding). ``torch.inference_mode`` throughout, bf16 autocast on CUDA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.base import InputError, ModelUnavailableError
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


#: Megatron-LM ``tokenizer_type`` values (as recorded in converted checkpoints' configs) -> lower-casing.
MEGATRON_TOKENIZER_CASING = {"BertWordPieceCase": False, "BertWordPieceLowerCase": True}


def config_lowercase(config: Any) -> bool | None:
    """Whether the checkpoint's config says its text was lower-cased (``None``: it does not say)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    kind = get("tokenizer_type", None)
    if kind in MEGATRON_TOKENIZER_CASING:
        return MEGATRON_TOKENIZER_CASING[kind]
    if kind is not None:
        raise ValueError(f"unknown tokenizer_type {kind!r} in the model config (known: "
                         f"{sorted(MEGATRON_TOKENIZER_CASING)})")
    lower = get("do_lower_case", None)
    return None if lower is None else bool(lower)


def tokenizer_lowercases(tok: Any) -> bool:
    """Whether a loaded tokenizer lower-cases its input (checked by tokenising, not by attributes)."""
    probe = "Aa"
    norm = getattr(getattr(tok, "backend_tokenizer", None), "normalizer", None)
    if norm is not None:
        return norm.normalize_str(probe) != probe
    return bool(getattr(tok, "do_lower_case", False))


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
    def lowercase(self) -> bool | None:
        """The casing to tokenise with: the ``lowercase`` setting, or the model config's (see the module docstring)."""
        setting = self.settings.preprocessing.get("lowercase", "from_config")
        if isinstance(setting, bool):
            return setting
        if setting != "from_config":
            raise ValueError(f"expert {self.spec.name!r}: lowercase must be true, false or "
                             f"'from_config', got {setting!r}")
        from transformers import AutoConfig

        try:
            return config_lowercase(self.from_pretrained(AutoConfig))
        except ModelUnavailableError:
            return None  # no config: the weights are missing too, and load() says so

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self.offline()  # before transformers / huggingface_hub are imported
            from transformers import AutoTokenizer

            lower = self.lowercase()
            tok = self.from_pretrained(AutoTokenizer, **({} if lower is None else {"do_lower_case": lower}))
            if lower is not None and tokenizer_lowercases(tok) != lower:
                raise ModelUnavailableError(
                    f"expert {self.spec.name!r}: the model config says lower-casing={lower}, but the tokenizer at "
                    f"{self.model_source()!r} {'does not lower-case' if lower else 'lower-cases'} its input")
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
        ids, mask = self.to_device(ids), self.to_device(mask)
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
