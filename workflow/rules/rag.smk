# Retrieval-augmented (RAG) experts (MedMIX Appendix B):
#   knowledge base (kb_ingest) -> retrieval index per RAG expert (rag_index)
#   -> report bridging for image-like modalities (bridge) -> the `extract` rule.
# Config (all optional; defaults below):
#   rag:
#     knowledge_base: demo            # demo (shipped, extractors/knowledge/data/demo_kb.jsonl) | medlineplus | a key of `sources`
#     medlineplus_dir: ../shared/data/medlineplus   # folder of per-topic XML, or NLM's bulk health-topics XML file
#     language: English               # topics kept from the bulk XML
#     sources: {}                     # extra knowledge bases: {name: path to XML folder/file or .jsonl}
#     cxr_pairs: {}                   # lateral CXR modality -> frontal modality MAIRA-2 pairs it with
#     bridges:                        # per report generator: identity (rerun on change) + runtime keys
#       maira2: {revision: <40-hex>, allow_remote_code: false, max_new_tokens: 300, local_dir: ..., device: auto}
#       merlin: {max_new_tokens: 128, options: {cache_dir: ...}}
#       histgen: {options: {checkpoint: ..., ann_path: ...}}
# Helpers and input functions: rag_common.smk.


wildcard_constraints:
    kb="[A-Za-z0-9_]+",
    encoder="rag_[A-Za-z0-9_]+",
    bridge_model="|".join(BRIDGE_FOR_KIND.values()),


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
    threads: rule_threads("kb_ingest")
    resources:
        **rule_resources("kb_ingest", mem_mb=2000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/kb_ingest.py"


rule rag_index:
    """Encode the knowledge base with a RAG expert's article encoder into a FAISS inner-product
    index (+ the label-free projection into the language model's input space, if it has one).
    Reruns only when the knowledge base, the encoder/LM identity or the index code changes."""
    input:
        kb="results/knowledge/{kb}/kb.parquet",
        code=lambda wc: sorted({*expert_code(wc.encoder), *code_inputs("extractors.knowledge.index")}),
    output:
        directory("results/knowledge/{kb}/{encoder}"),
    params:
        encoder_id=lambda wc: str(rag_index_specs(wc.encoder)[0]["model_id"]),
        encoder_revision=lambda wc: str(rag_index_specs(wc.encoder)[0]["revision"]),
        lm_id=lambda wc: str((rag_index_specs(wc.encoder)[1] or {}).get("model_id", "")),
        lm_revision=lambda wc: str((rag_index_specs(wc.encoder)[1] or {}).get("revision", "")),
        identity=lambda wc: canonical_json(rag_index_specs(wc.encoder)),
        expert_identity=lambda wc: canonical_json(
            {k: expert_identity(config, wc.encoder)[k] for k in EMBEDDING_SETTINGS}),
    log:
        "logs/rag_index/{kb}/{encoder}.log",
    benchmark:
        "results/benchmarks/rag_index/{kb}/{encoder}.tsv"
    threads: rule_threads("rag_index", 2)
    resources:
        **rule_resources("rag_index", mem_mb=6000),
        expert_runtime=lambda wc: canonical_json(expert_runtime(config, wc.encoder)),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/rag_index.py"


rule bridge:
    """Stage 1 for image-like modalities: one generated report per sample (MAIRA-2 for CXR,
    Merlin for CT, HistGen for slides), cached so reruns never regenerate them."""
    input:
        inputs=lambda wc: inputs_path(wc.dataset),
        code=code_inputs("extractors.knowledge.jobs"),
    output:
        "results/{dataset}/bridge/{modality}/{bridge_model}.parquet",
    params:
        identity=bridge_identity,
        paired_frontal=lambda wc: str(rag_config()["cxr_pairs"].get(wc.modality, "")),
    log:
        "logs/bridge/{dataset}/{modality}/{bridge_model}.log",
    benchmark:
        "results/benchmarks/bridge/{dataset}/{modality}/{bridge_model}.tsv"
    threads: rule_threads("bridge")
    resources:
        **rule_resources("bridge", mem_mb=48000, gpu=1),
        bridge_runtime=lambda wc: canonical_json(
            {k: v for k, v in bridge_settings(wc.bridge_model).items() if k in BRIDGE_RUNTIME_KEYS}),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/bridge.py"
