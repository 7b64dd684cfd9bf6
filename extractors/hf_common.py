"""Loading and inference helpers shared by the Hugging Face-hosted foundation-model experts.

Every such expert loads with ``from_pretrained(model_source(), revision=..., local_files_only=
<offline>)``: ``local_dir`` (a folder with the weights) wins over the hub id; with no network
configured (``options.offline``, the default) ``HF_HUB_OFFLINE=1`` is set before the hub client is
imported and only the local Hugging Face cache is read. Any failure to find the weights becomes
:class:`~extractors.base.ModelUnavailableError` at once, naming the model id and how to provide it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any

from extractors.base import Extractor, ModelUnavailableError, is_fatal, resolve_device

log = logging.getLogger("medmix.extract")

#: Parameters a checkpoint may lack without changing the embeddings: the BERT pooler (outputs
#: not used: CLS / mean of the last hidden states are) and ViT mask tokens (masked pre-training only).
TOLERATED_MISSING = ("pooler.", "mask_token")

#: Exceptions the hub / transformers / open_clip raise when weights or configs are missing.
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, ImportError)


def raise_unless_missing(err: Exception) -> None:
    """Re-raise errors that are not about missing weights (out of memory, CUDA failures: :func:`is_fatal`)."""
    if is_fatal(err):
        raise err


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword for a weight dtype (``dtype``: transformers >= 4.56, the declared minimum)."""
    return {} if dtype is None else {"dtype": dtype}


class HubExpert(Extractor):
    """An :class:`Extractor` whose weights come from the Hugging Face hub (or a local copy)."""

    #: Extra sentence appended to the "model unavailable" message (e.g. gated-model hints).
    availability_note: str = ""

    def offline(self) -> bool:
        """Whether only local files may be read (``options.offline``, default true); if so, sets ``HF_HUB_OFFLINE=1``."""
        offline = bool(self.settings.options.get("offline", True))
        if offline:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return offline

    def unavailable(self, error: Exception) -> ModelUnavailableError:
        base = super().unavailable(error)
        return ModelUnavailableError(f"{base} {self.availability_note}".strip())

    def remote_code(self) -> bool:
        """``trust_remote_code``: only where the model needs it and the config allows it."""
        if not self.spec.trust_remote_code:
            return False
        if not self.settings.allow_remote_code:
            raise ModelUnavailableError(
                f"expert {self.spec.name!r} ({self.settings.model_id}) needs trust_remote_code; enable it with "
                f"experts.settings.{self.spec.name}.allow_remote_code: true after reviewing the model's code"
            )
        return True

    def hub_revision(self, source: str) -> str | None:
        """The revision to read from the hub (None for a local folder); warns when it is not a commit sha."""
        if os.path.isdir(source):
            return None
        revision = self.settings.revision
        if not (revision and re.fullmatch(r"[0-9a-f]{40}", revision)) and not getattr(self, "_warned_revision", False):
            self._warned_revision = True  # once per expert, not per file it reads
            log.warning("expert %s: revision %r of %s is not a pinned commit; set experts.settings.%s.revision to "
                        "the 40-hex commit you downloaded so that the run is reproducible",
                        self.spec.name, revision, source, self.spec.name)
        return revision

    def hub_kwargs(self) -> dict[str, Any]:
        """``revision`` / ``local_files_only`` / ``trust_remote_code`` for ``from_pretrained``."""
        source = self.model_source()
        return {
            "revision": self.hub_revision(source),
            "local_files_only": self.offline(),
            "trust_remote_code": self.remote_code(),
        }

    def from_pretrained(self, loader: Any, **kwargs: Any) -> Any:
        """``loader.from_pretrained(model_source(), ...)``; missing weights -> ModelUnavailableError."""
        try:
            source = self.model_source()
            return loader.from_pretrained(source, **self.hub_kwargs(), **kwargs)
        except ModelUnavailableError:
            raise
        except LOAD_ERRORS as err:
            raise_unless_missing(err)
            raise self.unavailable(err) from err

    def load_weights(self, loader: Any, **kwargs: Any) -> Any:
        """A ``transformers`` model whose every parameter came from the checkpoint.

        ``from_pretrained`` silently initialises tensors a checkpoint lacks (a wrong or partial
        download, another architecture): the expert would then embed with random weights. Missing
        tensors fail the job; only a few that no embedding here uses (``TOLERATED_MISSING``) are
        logged instead.
        """
        model, info = self.from_pretrained(loader, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        fatal = [k for k in missing if not any(t in k for t in TOLERATED_MISSING)]
        if fatal:
            raise ModelUnavailableError(
                f"expert {self.spec.name!r}: the checkpoint at {self.model_source()!r} lacks {len(fatal)} of the "
                f"model's tensors (e.g. {fatal[:3]}); it is not a {self.settings.model_id} checkpoint or is incomplete"
            )
        if missing:
            log.warning("expert %s: tensors not in the checkpoint (unused here, left initialised): %s",
                        self.spec.name, missing)
        return model

    def snapshot_dir(self) -> str:
        """A local folder holding the model repository (``local_dir`` or the pinned hub snapshot)."""
        source = self.model_source()
        if os.path.isdir(source):
            return source
        offline = self.offline()
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(repo_id=source, revision=self.hub_revision(source), local_files_only=offline)
        except LOAD_ERRORS as err:
            raise self.unavailable(err) from err

    # -- inference ----------------------------------------------------------------------
    def pick_device(self) -> str:
        self.device = resolve_device(self.settings.device)
        return self.device

    def on_cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def autocast(self):
        """bf16 autocast on CUDA, nothing on CPU (float32 there)."""
        import torch

        if self.on_cuda():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
