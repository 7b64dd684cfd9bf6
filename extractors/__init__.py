"""Expert extractors: one module per foundation-model (or weight-free) expert.

Use :func:`extractors.registry.create_extractor` to build one by name.
"""

from __future__ import annotations
