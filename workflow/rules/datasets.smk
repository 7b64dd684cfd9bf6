rule prepare_dataset:
    """Normalise a dataset (any adapter) into the cohort table and write its summary."""
    input:
        unpack(dataset_source),
    output:
        cohort="results/{dataset}/cohort.parquet",
        summary_json="results/{dataset}/summary.json",
        summary_md="results/{dataset}/summary.md",
    params:
        dataset_json=lambda wc: canonical_json(dataset_config(wc.dataset)),
    log:
        "logs/prepare_dataset/{dataset}.log",
    resources:
        **rule_resources("prepare_dataset", mem_mb=2000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/prepare_dataset.py"
