# Retrieval-augmented (RAG) experts (MedMIX Appendix B):
#   knowledge base (kb_ingest) -> retrieval index per RAG expert (rag_index)
#   -> report bridging for image-like modalities (bridge) -> the `extract` rule.
# Config (all optional; defaults below):
#   rag:
#     knowledge_base: demo            # demo (shipped, medmix/data/demo_kb.jsonl) | medlineplus | a key of `sources`
#     medlineplus_dir: ../shared/data/medlineplus   # folder of per-topic XML, or NLM's bulk health-topics XML file
#     language: English               # topics kept from the bulk XML
#     sources: {}                     # extra knowledge bases: {name: path to XML folder/file or .jsonl}
#     cxr_pairs: {}                   # lateral CXR modality -> frontal modality MAIRA-2 pairs it with
#     bridges:                        # per report generator: identity (rerun on change) + runtime keys
#       maira2: {revision: <40-hex>, allow_remote_code: false, max_new_tokens: 300, local_dir: ..., device: auto}
#       merlin: {max_new_tokens: 128, options: {cache_dir: ...}}
#       histgen: {options: {checkpoint: ..., ann_path: ...}}
from pathlib import Path

from extractors.registry import create_extractor
from medmix.knowledge.bridge import BRIDGE_FOR_KIND

RAG_EXPERTS = ("rag_medcpt_qwen2", "rag_minilm")
#: Experts that read image-like kinds through a generated report.
RAG_BRIDGED_EXPERTS = ("rag_medcpt_qwen2",)
BRIDGE_RUNTIME_KEYS = ("local_dir", "device")


wildcard_constraints:
    kb="[A-Za-z0-9_]+",
    encoder="rag_[A-Za-z0-9_]+",
    bridge_model="|".join(BRIDGE_FOR_KIND.values()),


def rag_config():
    defaults = {"knowledge_base": "demo", "medlineplus_dir": "../shared/data/medlineplus", "language": "English",
                "sources": {}, "cxr_pairs": {}, "bridges": {}}
    return {**defaults, **config.get("rag", {})}


def kb_source(wildcards):
    """The knowledge base's source (+ the ingest code, so editing it rebuilds the KB)."""
    rc = rag_config()
    code = {"code": package_sources("medmix/knowledge/kb.py")}
    if wildcards.kb == "demo":
        return {"source": str(Path(workflow.basedir) / "medmix" / "data" / "demo_kb.jsonl"), **code}
    if wildcards.kb == "medlineplus":
        return {"source": rc["medlineplus_dir"], **code}
    if wildcards.kb in rc["sources"]:
        return {"source": rc["sources"][wildcards.kb], **code}
    raise ValueError(f"config key `rag.knowledge_base`: unknown knowledge base {wildcards.kb!r}; "
                     f"use demo, medlineplus or a key of rag.sources")


def rag_index_specs(expert):
    """(article encoder identity, language-model identity or None) of a RAG expert's index."""
    identity = expert_identity(config, expert)
    ex = create_extractor(expert, {k: identity[k] for k in ("model_id", "revision", "preprocessing")})
    encoder, lm = ex.index_specs()
    return encoder.identity(), (lm.identity() if lm is not None else None)


def bridge_settings(name):
    return dict(rag_config()["bridges"].get(name, {}))


def bridge_identity(wildcards):
    """Output-affecting settings of a report generator (plain JSON string)."""
    s = {k: v for k, v in bridge_settings(wildcards.bridge_model).items() if k not in BRIDGE_RUNTIME_KEYS}
    return canonical_json(s)


def rag_extra_inputs(dataset, modality, expert):
    """Extra named inputs of the extract rule for a RAG expert: its index folder and, for
    image-like kinds, the bridged-report file. Passed to the extractor as settings.options."""
    if expert not in RAG_EXPERTS:
        return {}
    inputs = {"index_dir": f"results/knowledge/{rag_config()['knowledge_base']}/{expert}"}
    kind = modality_kind(dataset, modality)
    if expert in RAG_BRIDGED_EXPERTS and kind in BRIDGE_FOR_KIND:
        inputs["bridge_path"] = f"results/{dataset}/bridge/{modality}/{BRIDGE_FOR_KIND[kind]}.parquet"
    return inputs


EXPERT_INPUT_HOOKS.append(rag_extra_inputs)


rule kb_ingest:
    """MedlinePlus health-topic XML (bulk or per-topic QA layout) or the demo KB -> Parquet."""
    input:
        unpack(kb_source),
    output:
        "results/knowledge/{kb}/kb.parquet",
    params:
        language=lambda wc: rag_config()["language"],
    log:
        "logs/kb_ingest/{kb}.log",
    benchmark:
        "results/benchmarks/kb_ingest/{kb}.tsv"
    resources:
        **rule_resources("kb_ingest", mem_mb=2000),
    script:
        "../scripts/kb_ingest.py"


rule rag_index:
    """Encode the knowledge base with a RAG expert's article encoder into a FAISS inner-product
    index (+ the label-free projection into the language model's input space, if it has one).
    Reruns only when the knowledge base, the encoder/LM identity or the index code changes."""
    input:
        kb="results/knowledge/{kb}/kb.parquet",
        code=lambda wc: sorted({*source_files(wc.encoder), *package_sources(
            "medmix/knowledge/index.py", "medmix/knowledge/encoders.py", "medmix/knowledge/projection.py")}),
    output:
        directory("results/knowledge/{kb}/{encoder}"),
    params:
        encoder_id=lambda wc: str(rag_index_specs(wc.encoder)[0]["model_id"]),
        encoder_revision=lambda wc: str(rag_index_specs(wc.encoder)[0]["revision"]),
        lm_id=lambda wc: str((rag_index_specs(wc.encoder)[1] or {}).get("model_id", "")),
        lm_revision=lambda wc: str((rag_index_specs(wc.encoder)[1] or {}).get("revision", "")),
        identity=lambda wc: canonical_json(rag_index_specs(wc.encoder)),
    log:
        "logs/rag_index/{kb}/{encoder}.log",
    benchmark:
        "results/benchmarks/rag_index/{kb}/{encoder}.tsv"
    threads: 2
    resources:
        **rule_resources("rag_index", mem_mb=6000),
    script:
        "../scripts/rag_index.py"


rule bridge:
    """Stage 1 for image-like modalities: one generated report per sample (MAIRA-2 for CXR,
    Merlin for CT, HistGen for slides), cached so reruns never regenerate them."""
    input:
        cohort=lambda wc: cohort_path(wc.dataset),
        code=package_sources("medmix/knowledge/bridge.py"),
    output:
        "results/{dataset}/bridge/{modality}/{bridge_model}.parquet",
    params:
        identity=bridge_identity,
        paired_frontal=lambda wc: str(rag_config()["cxr_pairs"].get(wc.modality, "")),
    log:
        "logs/bridge/{dataset}/{modality}/{bridge_model}.log",
    benchmark:
        "results/benchmarks/bridge/{dataset}/{modality}/{bridge_model}.tsv"
    resources:
        **rule_resources("bridge", mem_mb=48000, gpu=1),
    script:
        "../scripts/bridge.py"
