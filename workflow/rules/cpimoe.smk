# CP-IMoE (medmix.methods.cpimoe): its pre-training stages as cached jobs, and the supplementary's
# missing grid (medmix.plan.missing_grid) with its tables and router-weight figures. Helpers: cpimoe_common.smk.


rule stages:
    """The pre-training stages of a staged method (CP-IMoE: specific_<m>, redundant, synergistic),
    for every seed, on what the train-time protocol leaves of the training split, one subfolder
    per stage; shared by the methods with this stage owner."""
    input:
        cohort=lambda wc: cohort_path(wc.dataset),
        features=lambda wc: dataset_features(wc.dataset),
        code=stage_code,
    output:
        stages=directory("results/{dataset}/stages/{method}/{protocol}"),
    params:
        committee=lambda wc: canonical_json(committee_spec(wc.dataset)),
        feature_keys=lambda wc: canonical_json(feature_keys(wc.dataset)),
        identities=lambda wc: identities_json(wc.dataset),
        training=lambda wc: canonical_json(stage_module(wc.method).stage_params(training_params(config, wc.method))),
        seeds=canonical_json(config["seeds"]),
        train_protocol=lambda wc: canonical_json(train_protocol_spec(wc.dataset, wc.protocol)),
    log:
        "logs/stages/{dataset}/{method}/{protocol}.log",
    benchmark:
        "results/benchmarks/stages/{dataset}/{method}/{protocol}.tsv"
    threads: rule_threads("stages")
    resources:
        **rule_resources("stages", mem_mb=4000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/stages.py"


rule cpimoe_tables:
    """Table S3-style grid table, per-class F1, Table S2 (FLOP counter) and router heatmaps."""
    input:
        predictions=grid_prediction_files(),
        models=list(complexity_inputs().values()),
        features=sorted({f for d in complexity_inputs() for f in dataset_features(d)}),
        code=code_inputs("medmix.evaluation.cpimoe_tables", "medmix.plan.missing_grid"),
    output:
        table_s3=report("results/tables/cpimoe/table_s3.md", caption="../report/table_s3.rst",
                        category="Tables", subcategory="CP-IMoE grid"),
        per_class=report("results/tables/cpimoe/per_class_f1.md", caption="../report/per_class_f1.rst",
                         category="Tables", subcategory="CP-IMoE grid"),
        metrics=report("results/tables/cpimoe/grid_metrics.csv", caption="../report/grid_metrics.rst",
                       category="Tables", subcategory="CP-IMoE grid"),
        gates=report("results/tables/cpimoe/router_weights.csv", caption="../report/router_weights.rst",
                     category="Tables", subcategory="CP-IMoE grid"),
        table_s2=report("results/tables/cpimoe/table_s2.md", caption="../report/table_s2.rst",
                        category="Tables", subcategory="CP-IMoE grid"),
        figures=[report(f, caption="../report/router.rst", category="Figures", subcategory="CP-IMoE grid")
                 for f in grid_figures().values()],
    params:
        cells=canonical_json(GRID_CELLS),
        mode=missing_grid.grid(config).get("mode", "train_and_test"),
        seeds=canonical_json(missing_grid.grid_seeds(config)),
        tasks=canonical_json({d: dataset_config(d)["task"] for d in DATASETS}),
        figure_methods=canonical_json(missing_grid.grid(config).get("figure_methods", [])),
        figure_keys=canonical_json(list(grid_figures())),
        complexity=lambda wc: complexity_spec(),
        batch_size=lambda wc: training_params(config, "cpimoe")["batch_size"],
    log:
        "logs/cpimoe_tables.log",
    benchmark:
        "results/benchmarks/cpimoe_tables.tsv"
    threads: rule_threads("cpimoe_tables")
    resources:
        **rule_resources("cpimoe_tables", mem_mb=2000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/cpimoe_tables.py"
