rule fit:
    """Train one run (a method or a variant) under one train-time protocol for every seed; save it."""
    input:
        cohort=lambda wc: cohort_path(wc.dataset),
        features=lambda wc: dataset_features(wc.dataset, wc.method),
        code=lambda wc: method_code(wc.method, "medmix.pipeline.fit"),
        pretrained=lambda wc: stage_dirs(wc.dataset, wc.method),
    output:
        model=directory("results/{dataset}/runs/{method}/{protocol}/model"),
        curves="results/{dataset}/runs/{method}/{protocol}/curves.csv",
        info="results/{dataset}/runs/{method}/{protocol}/fit.json",
    params:
        method=lambda wc: run_spec(config, wc.method).method,
        committee=lambda wc: canonical_json(committee_spec(wc.dataset, wc.method)),
        feature_keys=lambda wc: canonical_json(feature_keys(wc.dataset, wc.method)),
        identities=lambda wc: identities_json(wc.dataset, wc.method),
        training=lambda wc: canonical_json(training_params(config, wc.method)),
        seeds=lambda wc: canonical_json(run_seeds(config, wc.dataset, wc.method, wc.protocol)),
        train_protocol=lambda wc: canonical_json(train_protocol_spec(wc.dataset, wc.protocol)),
    log:
        "logs/fit/{dataset}/{method}/{protocol}.log",
    benchmark:
        "results/benchmarks/fit/{dataset}/{method}/{protocol}.tsv"
    threads: 1
    resources:
        **rule_resources("fit", mem_mb=4000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/fit.py"


rule evaluate:
    """Predictions of a fitted method on one cohort: the development dataset's validation split
    (clean) and test split under every test-time protocol, or an external cohort. Never trains."""
    input:
        model="results/{dataset}/runs/{method}/{protocol}/model",
        cohort=lambda wc: cohort_path(wc.cohort),
        features=lambda wc: dataset_features(wc.cohort, wc.method),
        code=lambda wc: method_code(wc.method, "medmix.pipeline.fit"),
    output:
        predictions="results/{dataset}/runs/{method}/{protocol}/predictions/{cohort}.parquet",
    params:
        committee=lambda wc: canonical_json(committee_spec(wc.cohort, wc.method)),
        feature_keys=lambda wc: canonical_json(feature_keys(wc.cohort, wc.method)),
        identities=lambda wc: identities_json(wc.cohort, wc.method),
        test_protocols=lambda wc: canonical_json(test_protocol_specs(wc.dataset, wc.method, wc.protocol)),
    log:
        "logs/evaluate/{dataset}/{method}/{protocol}/{cohort}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{method}/{protocol}/{cohort}.tsv"
    threads: 1
    resources:
        **rule_resources("evaluate", mem_mb=4000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/evaluate.py"
