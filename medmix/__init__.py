"""medmix: multimodal medical prediction under missing modalities."""

from __future__ import annotations

__version__ = "0.1.0"
