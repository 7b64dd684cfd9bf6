"""Metrics (thresholds tuned on validation only) and the paper-style tables."""

from __future__ import annotations
