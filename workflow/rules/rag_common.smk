# Helpers of the retrieval-augmented (RAG) rules in rag.smk; configuration documented there.
from pathlib import Path

from extractors.registry import create_extractor
from extractors.knowledge.bridge import BRIDGE_FOR_KIND

RAG_EXPERTS = ("rag_medcpt_qwen2", "rag_minilm")
#: Experts that read image-like kinds through a generated report.
RAG_BRIDGED_EXPERTS = ("rag_medcpt_qwen2",)
BRIDGE_RUNTIME_KEYS = ("local_dir", "device")


def rag_config():
    defaults = {"knowledge_base": "demo", "medlineplus_dir": "../shared/data/medlineplus", "language": "English",
                "sources": {}, "cxr_pairs": {}, "bridges": {}}
    return {**defaults, **config.get("rag", {})}


def kb_source(wildcards):
    """The knowledge base's source (+ the ingest code, so editing it rebuilds the KB)."""
    rc = rag_config()
    code = {"code": code_inputs("extractors.knowledge.kb")}
    if wildcards.kb == "demo":
        return {"source": str(Path(workflow.basedir) / "extractors" / "knowledge" / "data" / "demo_kb.jsonl"), **code}
    if wildcards.kb == "medlineplus":
        return {"source": rc["medlineplus_dir"], **code}
    if wildcards.kb in rc["sources"]:
        return {"source": rc["sources"][wildcards.kb], **code}
    raise ValueError(f"config key `rag.knowledge_base`: unknown knowledge base {wildcards.kb!r}; "
                     f"use demo, medlineplus or a key of rag.sources")


def rag_index_specs(expert):
    """(article encoder identity, language-model identity or None) of a RAG expert's index, each with
    the commit medmix.lock.json resolves a `main`-like revision to (`locked_commit`; a changed commit
    rebuilds the index; extract_common.smk)."""
    identity = expert_identity(config, expert)
    ex = create_extractor(expert, {k: identity[k] for k in EMBEDDING_SETTINGS})
    encoder, lm = ex.index_specs()
    locked = expert_locked_commits(expert)
    enc = {**encoder.identity(), **({"locked_commit": locked[encoder.model_id]} if encoder.model_id in locked else {})}
    if lm is None:
        return enc, None
    return enc, {**lm.identity(), **({"locked_commit": locked[lm.model_id]} if lm.model_id in locked else {})}


def bridge_settings(name):
    return dict(rag_config()["bridges"].get(name, {}))


def bridge_identity(wildcards):
    """Output-affecting settings of a report generator (plain JSON string)."""
    s = {k: v for k, v in bridge_settings(wildcards.bridge_model).items() if k not in BRIDGE_RUNTIME_KEYS}
    return canonical_json(s)


def rag_extra_inputs(dataset, modality, expert):
    """Extra named inputs a RAG expert adds to its extraction jobs: its index folder and, for
    image-like kinds, the bridged-report file. Passed to the extractor as settings.options."""
    if expert not in RAG_EXPERTS:
        return {}
    inputs = {"index_dir": f"results/knowledge/{rag_config()['knowledge_base']}/{expert}"}
    kind = modality_kind(dataset, modality)
    if expert in RAG_BRIDGED_EXPERTS and kind in BRIDGE_FOR_KIND:
        inputs["bridge_path"] = f"results/{dataset}/bridge/{modality}/{BRIDGE_FOR_KIND[kind]}.parquet"
    return inputs


EXPERT_INPUT_HOOKS.append(rag_extra_inputs)
