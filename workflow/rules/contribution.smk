rule contribution:
    """Performance by modality subset and each modality's Shapley contribution (medmix.plan.sweep,
    medmix.evaluation.contribution), from the clean test predictions of the sweep's runs."""
    input:
        predictions=sweep_prediction_files(),
        code=code_inputs("medmix.evaluation.contribution", "medmix.plan.sweep"),
    output:
        sweep_md="results/tables/sweep.md",
        sweep_csv=report("results/tables/sweep.csv", caption="../report/sweep.rst", category="Tables", subcategory="Modality sweep"),
        sweep_png=report("results/tables/sweep.png", caption="../report/sweep_figure.rst", category="Figures", subcategory="Modality sweep"),
        contribution_md="results/tables/contribution.md",
        contribution_csv=report("results/tables/contribution.csv", caption="../report/contribution.rst",
                                category="Tables", subcategory="Modality sweep"),
        contribution_png=report("results/tables/contribution.png", caption="../report/contribution_figure.rst",
                                category="Figures", subcategory="Modality sweep"),
    params:
        plan=lambda wc: canonical_json(sweep_plan(config)),
        tasks=canonical_json({d: dataset_config(d)["task"] for d in DATASETS}),
        seeds=canonical_json(sweep_seeds(config)),
        permutations=config.get("sweep", {}).get("permutations", 64),
        permutation_seed=config.get("sweep", {}).get("permutation_seed", 0),
        runs=canonical_json(config["methods"]),
    log:
        "logs/contribution.log",
    benchmark:
        "results/benchmarks/contribution.tsv"
    threads: rule_threads("contribution")
    resources:
        **rule_resources("contribution", mem_mb=2000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/contribution.py"
