rule fit:
    """Train one method under one train protocol for every seed; evaluate every test protocol."""
    input:
        unpack(fit_inputs),
    output:
        predictions="results/{dataset}/runs/{method}/{protocol}/predictions.parquet",
        curves="results/{dataset}/runs/{method}/{protocol}/curves.csv",
        checkpoints=directory("results/{dataset}/runs/{method}/{protocol}/checkpoints"),
        info="results/{dataset}/runs/{method}/{protocol}/run.json",
    params:
        committee=lambda wc: committee_json(wc.dataset),
        training=lambda wc: canonical_json(training_params(config, wc.method)),
        seeds=lambda wc: canonical_json(config["seeds"]),
        train_protocol=lambda wc: canonical_json(config["protocols"]["train"][wc.protocol]),
        test_protocols=lambda wc: canonical_json(config["protocols"]["test"]),
        external=lambda wc: canonical_json(dataset_config(wc.dataset).get("external", [])),
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
