checkpoint prepare_dataset:
    """Normalise a dataset (any adapter) into the cohort table, its labels-free input view and a summary.

    A checkpoint: extraction of a dataset whose view cannot be built at planning time (the
    generated demo) is planned once the view exists, from its fingerprint, so editing labels or
    splits never reruns extraction. With `inputs_check: content` the source tables are compared by
    their sha256 too (param `sources`), not only by mtime.
    """
    input:
        unpack(dataset_source),
    output:
        cohort="results/{dataset}/cohort.parquet",
        inputs="results/{dataset}/inputs.parquet",
        summary_json="results/{dataset}/summary.json",
        summary_md="results/{dataset}/summary.md",
    params:
        dataset_json=lambda wc: cohort_settings(wc.dataset),
        # `inputs_check: content`: the source tables' sha256 ("" in the default stat mode)
        sources=source_digest,
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    threads: rule_threads("prepare_dataset")
    resources:
        **rule_resources("prepare_dataset", mem_mb=2000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/prepare_dataset.py"
