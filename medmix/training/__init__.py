"""Training utilities shared by fusion methods."""

from __future__ import annotations
