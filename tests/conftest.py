"""Session setup: a hermetic environment (see tests/hermetic.py) and the shared data fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from ci_skips import pytest_runtest_makereport  # noqa: F401  (the hook: an import skip fails in CI)
from hermetic import blocked_connections, fail_if_blocked, guard_network, isolate_environment

# Before any test module imports transformers / huggingface_hub / torch: they read these at import.
SESSION_DIR = isolate_environment()
guard_network()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def no_network():
    """Fail a test that tried to connect beyond this machine, even if a library swallowed the error."""
    blocked_connections.clear()
    yield
    fail_if_blocked()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is fastest (and immune to a busy machine).

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}: these tests need ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def medlineplus_minilm(tmp_path_factory, shared_data):
    """The real MedlinePlus KB ingested and indexed once per session with rag_minilm's article encoder."""
    from extractors.knowledge.index import build_index
    from extractors.knowledge.kb import ingest
    from extractors.registry import create_extractor

    root = tmp_path_factory.mktemp("medlineplus")
    meta = ingest(shared_data / "medlineplus", root / "kb.parquet")
    settings = {"options": {"index_dir": str(root / "index")}, "batch_size": 32}
    encoder, lm = create_extractor("rag_minilm", settings).index_specs()
    assert lm is None
    build_index(root / "kb.parquet", root / "index", encoder, batch_size=32)
    return {"root": root, "meta": meta, "settings": settings}

