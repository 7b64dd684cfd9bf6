"""Neural fusion models on cached expert embeddings."""

from __future__ import annotations

from medmix.models.medmix import MedMIXConfig, MedMIXNet, MedMIXOutput, TeacherHeads, adapter_rank

__all__ = ["MedMIXConfig", "MedMIXNet", "MedMIXOutput", "TeacherHeads", "adapter_rank"]
