"""Retrieval hit rates of long queries under each long-query rule (issue 18).

Ingests the real MedlinePlus documents (``../shared/data/medlineplus``), indexes them with the
real all-MiniLM-L6-v2 weights (the ``rag_minilm`` expert's encoder; MedCPT weights are not
available offline) and retrieves the 34 long queries of ``tests/data/rag_long_queries.json``
(18 reports, 16 EHR serialisations, the decisive content beyond the first 256 word pieces) under
``truncate`` / ``chunk_mean`` / ``chunk_max``, at the expert's 256-piece length and at 64 pieces
(MedCPT's query length, as a proxy). Prints top-1 / top-5 hit rates per query type. Usage::

    python tests/benchmarks/bench_rag_long_queries.py [--workdir /tmp/rag_bench] [--lengths 256 64]

Indexing the 981 documents takes 1-2 minutes on 2 CPU cores (reused from ``--workdir``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ (long_queries.py)

from long_queries import hit_rates, load_queries  # noqa: E402

from extractors.knowledge.encoders import LONG_QUERY_RULES  # noqa: E402
from extractors.knowledge.index import build_index  # noqa: E402
from extractors.knowledge.kb import ingest  # noqa: E402
from extractors.registry import create_extractor  # noqa: E402

DATA = HERE.parents[2] / "shared" / "data" / "medlineplus"


def prepare(workdir: Path) -> dict:
    """The KB and MiniLM index under ``workdir`` (built once); the rag_minilm settings using them."""
    settings = {"options": {"index_dir": str(workdir / "index")}, "batch_size": 32}
    if not (workdir / "index" / "manifest.json").exists():
        ingest(DATA, workdir / "kb.parquet")
        encoder, _ = create_extractor("rag_minilm", settings).index_specs()
        build_index(workdir / "kb.parquet", workdir / "index", encoder, batch_size=32)
    return settings


def measure(settings: dict, rule: str, length: int, queries: list[dict]) -> dict:
    ex = create_extractor("rag_minilm", {**settings, "preprocessing": {"long_query": rule}})
    ex.load()
    # The 64-piece proxy (MedCPT's query length) queries the same 256-piece article index.
    ex._query_encoder.spec.max_length = length
    ex._query_encoder.model.max_seq_length = length
    _, idx = ex.retrieve([q["query"] for q in queries])
    return hit_rates(ex._index.titles, idx, queries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 64])
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rag_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = prepare(workdir)
    queries = load_queries()
    print(f"{len(queries)} queries ({sum(q['type'] == 'report' for q in queries)} reports, "
          f"{sum(q['type'] == 'ehr' for q in queries)} EHR); index in {workdir}")
    print(f"{'query length':>12} {'rule':>10} | {'report top1/top5':>16} | {'ehr top1/top5':>14} | "
          f"{'all top1/top5':>14}")
    for length in args.lengths:
        for rule in LONG_QUERY_RULES:
            r = measure(settings, rule, length, queries)
            cells = [f"{r[g]['top1']:.2f} / {r[g]['top5']:.2f}" for g in ("report", "ehr", "all")]
            print(f"{length:>12} {rule:>10} | {cells[0]:>16} | {cells[1]:>14} | {cells[2]:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
