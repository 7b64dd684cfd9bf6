rule tables:
    """Metrics (thresholds tuned on validation) and the paper-style tables from cached predictions."""
    input:
        predictions=prediction_files(),
        cohorts=[cohort_path(d) for d in DATASETS],
        summaries=[f"results/{d}/summary.md" for d in DATASETS],
        code=code_inputs("medmix.evaluation.tables"),
    output:
        main="results/tables/main.md",
        metrics="results/tables/metrics.csv",
        robustness="results/tables/robustness.md",
        datasets="results/tables/datasets.md",
    params:
        seeds=canonical_json(config["seeds"]),
        tasks=canonical_json({d: dataset_config(d)["task"] for d in DATASETS}),
    log:
        "logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    resources:
        **rule_resources("tables", mem_mb=2000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/tables.py"


rule features:
    """Target: every configured feature file (extraction only)."""
    input:
        [feature_path(d, m, e) for d, m, e in EXTRACTION_JOBS],
