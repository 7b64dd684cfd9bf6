rule tables:
    """Metrics (thresholds tuned on validation) and the paper-style tables from cached predictions."""
    input:
        predictions=fit_outputs(),
        cohorts=[cohort_path(d) for d in DATASETS],
        summaries=[f"results/{d}/summary.md" for d in DATASETS],
        code=package_sources("medmix/evaluation/*.py"),
    output:
        main="results/tables/main.md",
        metrics="results/tables/metrics.csv",
        robustness="results/tables/robustness.md",
        datasets="results/tables/datasets.md",
    params:
        seeds=canonical_json(config["seeds"]),
    log:
        "logs/tables.log",
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
