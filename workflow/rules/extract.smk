# Stage 1: one expert over one modality of one dataset -> one Parquet feature file.
# Unsharded experts (extraction.shards = 1, the default): one `extract` job writes the file.
# Sharded experts: `extract_shard` jobs (one per shard of the sample ids, medmix.store.shards)
# write parts, `merge_shards` merges them into the same file (`ruleorder` picks it for them).
# Helpers: extract_common.smk.


ruleorder: merge_shards > extract


rule extract:
    """Embed one modality of one dataset with one expert into one Parquet feature file.

    Reruns exactly when what the embeddings depend on changes: the expert's code (the closure of
    its module's imports), its identity params (model id, revision, preprocessing), the weights
    in its `local_dir` (file names, sizes, mtimes), the commit medmix.lock.json resolves a
    `main`-like revision to (`medmix fetch`) and the inputs it reads (ids, inputs, each
    input file's name, size and mtime, and the modality's input schema: a series' variable list,
    a table's columns and training-split categories). The labels-free input view is `ancient`: rewriting it
    with the same inputs (a label or split edit) reruns nothing. Runtime settings travel as a
    resource and rerun nothing.
    """
    input:
        unpack(extract_hook_inputs),
        inputs=extract_view_input,
        code=lambda wc: expert_code(wc.expert),
    output:
        features="results/{dataset}/features/{modality}/{expert}.parquet",
    params:
        kind=lambda wc: modality_kind(wc.dataset, wc.modality),
        **{key: expert_param(key) for key in EMBEDDING_SETTINGS},
        inputs=input_fingerprint_param,
        weights=weights_fingerprint,
        locked_commits=locked_commits_param,
        max_failed_fraction=str(config["extraction"]["max_failed_fraction"]),
    log:
        "logs/extract/{dataset}/{modality}/{expert}.log",
    benchmark:
        "results/benchmarks/extract/{dataset}/{modality}/{expert}.tsv"
    threads: extract_threads
    resources:
        mem_mb=extract_resource("mem_mb"),
        runtime=extract_resource("runtime"),
        gpu=extract_resource("gpu"),
        expert_runtime=expert_runtime_json,
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/extract.py"


rule extract_shard:
    """One shard of a sharded expert's extraction: the samples whose blake2b(sample id) mod
    `shards` is `shard`, into one part. Reruns as `extract` does, except that the input
    fingerprint is the shard's own: a changed input file reruns only the shard holding it."""
    input:
        unpack(extract_hook_inputs),
        inputs=shard_view_input,
        code=lambda wc: expert_code(wc.expert),
    output:
        features="results/{dataset}/feature_shards/{modality}/{expert}/{shard}-of-{shards}.parquet",
    params:
        kind=lambda wc: modality_kind(wc.dataset, wc.modality),
        **{key: expert_param(key) for key in EMBEDDING_SETTINGS},
        inputs=shard_fingerprint_param,
        weights=weights_fingerprint,
        locked_commits=locked_commits_param,
        max_failed_fraction=str(config["extraction"]["max_failed_fraction"]),
    log:
        "logs/extract/{dataset}/{modality}/{expert}/{shard}-of-{shards}.log",
    benchmark:
        "results/benchmarks/extract/{dataset}/{modality}/{expert}/{shard}-of-{shards}.tsv"
    threads: extract_threads
    resources:
        mem_mb=extract_resource("mem_mb"),
        runtime=extract_resource("runtime"),
        gpu=extract_resource("gpu"),
        expert_runtime=expert_runtime_json,
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/extract.py"


rule merge_shards:
    """The feature file of a sharded expert: its parts merged in the input view's row order,
    checked against the view (every sample exactly once, in its own shard), written atomically."""
    input:
        parts=shard_parts,
        inputs=lambda wc: ancient(inputs_path(wc.dataset)),
        code=code_inputs("extractors.job"),
    output:
        features="results/{dataset}/features/{modality}/{expert}.parquet",
    log:
        "logs/merge_shards/{dataset}/{modality}/{expert}.log",
    benchmark:
        "results/benchmarks/merge_shards/{dataset}/{modality}/{expert}.tsv"
    wildcard_constraints:
        # Only sharded experts (a pattern no expert name matches when none is).
        expert="|".join(SHARDED_EXPERTS) or "(?!)",
    threads: rule_threads("merge_shards")
    resources:
        **rule_resources("merge_shards", mem_mb=2000, runtime=15),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/merge_shards.py"
