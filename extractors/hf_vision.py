"""Shared code of the image experts: Hugging Face ViTs (DINOv2, DINOv3) with the [CLS] token.

An image expert exposes two steps that the slide and CT experts reuse:
``preprocess_image(PIL image) -> float32 [3, H, W]`` (the model's own preprocessing, CPU side)
and ``encode_pixels(float32 [N, 3, H, W]) -> float32 [N, dim]`` (the network, in sub-batches of
``batch_size``, bf16 autocast on CUDA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from extractors.hf_common import HubExpert
from extractors.inputs import read_image


class ImageExpert(HubExpert):
    """Interface of an image expert: preprocess on CPU, encode batches of pixel arrays."""

    def preprocess_image(self, image) -> np.ndarray:
        raise NotImplementedError

    def forward_pixels(self, pixels):
        """Model forward on a float tensor ``[n, 3, H, W]`` already on the device -> ``[n, dim]``."""
        raise NotImplementedError

    def prepare(self, value: Any) -> np.ndarray:
        return self.preprocess_image(read_image(value))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        self.load()
        out = np.zeros((len(pixels), self.dim), np.float32)
        step = max(1, int(self.settings.batch_size))
        for start in range(0, len(pixels), step):
            chunk = torch.as_tensor(np.ascontiguousarray(pixels[start : start + step]), dtype=torch.float32)
            with torch.inference_mode(), self.autocast():
                emb = self.forward_pixels(self.to_device(chunk))
            out[start : start + len(chunk)] = emb.float().cpu().numpy()
        return out

    def embed_batch(self, batch: list[np.ndarray]) -> np.ndarray:
        return self.encode_pixels(np.stack(batch))


class HFViTExpert(ImageExpert):
    """[CLS] token of the last hidden state of a Hugging Face ViT (after its final layer norm).

    Preprocessing is the checkpoint's own ``AutoImageProcessor`` (``preprocessor_config.json``),
    exactly as its model card shows.
    """

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        self._processor = None
        self._model = None

    @property
    def processor(self):
        if self._processor is None:
            self.offline()  # before transformers / huggingface_hub are imported
            from transformers import AutoImageProcessor

            self._processor = self.from_pretrained(AutoImageProcessor)
        return self._processor

    def load(self) -> None:
        if self._model is not None:
            return
        self.offline()
        from transformers import AutoModel

        self.pick_device()
        model = self.load_weights(AutoModel)
        hidden = getattr(model.config, "hidden_size", None)
        if hidden != self.dim:
            raise ValueError(f"expert {self.spec.name!r}: model hidden size {hidden} != declared dim {self.dim}")
        self._model = model.to(self.device).eval()
        _ = self.processor  # fail here, not per sample, if the processor config is missing

    def preprocess_image(self, image) -> np.ndarray:
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return pixels.numpy().astype(np.float32, copy=False)

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """The processor's per-channel mean and std (for inputs already resized, e.g. CT slices)."""
        proc = self.processor
        return (np.asarray(proc.image_mean, np.float32), np.asarray(proc.image_std, np.float32))

    def forward_pixels(self, pixels):
        return self._model(pixel_values=pixels).last_hidden_state[:, 0]
