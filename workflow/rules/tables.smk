rule tables:
    """Metrics (thresholds tuned on validation), the paper's tables, significance tests, metrics per
    missingness pattern and the figures, from cached predictions (medmix.evaluation.tables_job)."""
    input:
        predictions=prediction_files(),
        cohorts=[cohort_path(d) for d in DATASETS],
        summaries=[f"results/{d}/summary.md" for d in DATASETS],
        costs=costs_files(),
        code=code_inputs("medmix.evaluation.tables_job", "medmix.evaluation.figures", *TABLE_MODULES),
    output:
        main=report("results/tables/main.md", caption="../report/main.rst",
                    category="Tables", subcategory="Overview"),
        metrics=report("results/tables/metrics.csv", caption="../report/metrics.rst",
                       category="Tables", subcategory="Overview"),
        robustness=report("results/tables/robustness.md", caption="../report/robustness.rst",
                          category="Tables", subcategory="Overview"),
        datasets=report("results/tables/datasets.md", caption="../report/datasets.rst",
                        category="Tables", subcategory="Overview"),
        labels=report("results/tables/metrics_per_label.csv", caption="../report/metrics_per_label.rst",
                      category="Tables", subcategory="Overview"),
        patterns_md="results/tables/patterns.md",
        patterns_csv=report("results/tables/patterns.csv", caption="../report/patterns.rst",
                            category="Tables", subcategory="Missingness patterns"),
        significance=report("results/tables/significance.csv", caption="../report/significance.rst",
                            category="Tables", subcategory="Significance"),
        paper=[table_output(f) for f in PAPER_TABLE_FILES],
        figures=[
            report(f, caption=f"../report/{Path(f).stem}.rst", category="Figures")
            if f.endswith(".png") else f
            for f in FIGURE_FILES
        ],
    params:
        seeds=canonical_json(config["seeds"]),
        tasks=canonical_json({d: dataset_config(d)["task"] for d in DATASETS}),
        protocols=table_protocols_json(),
        run_methods=run_methods_json(),
        improvements=improvements_json(),
        datasets=canonical_json(DATASETS),
        expert_costs=expert_costs_json(),
    log:
        "logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    threads: rule_threads("tables", 2)  # the figures are drawn in a second process
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
