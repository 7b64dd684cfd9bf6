rule fit:
    """Train one run (a method or a variant) under one train-time protocol for every seed; save it."""
    input:
        cohort=lambda wc: cohort_path(wc.dataset),
        features=lambda wc: dataset_features(wc.dataset, wc.method),
        code=lambda wc: method_code(wc.method, "medmix.pipeline.fit"),
        pretrained=lambda wc: stage_dirs(wc.dataset, wc.method, wc.protocol),
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
    threads: rule_threads("fit")
    resources:
        **rule_resources("fit", mem_mb=4000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/fit.py"


# Evaluation: one job per development dataset over every fitted run of it, or per part of
# `evaluation.runs_per_job` runs (medmix.pipeline.fit: evaluating a run on the demo takes under a
# second, starting a job process ~2.5 s). Adding a test protocol or an external cohort reruns
# evaluation, never a fit.
for _dataset, (_name, _plan) in [(d, part) for d in DEV_DATASETS for part in evaluation_parts(d)]:

    rule:
        """Predictions of the fitted runs of one development dataset: the validation split (clean) and
        the test split under every test-time protocol, and each external cohort; the deployment cost
        of the tables' runs (Table E6). Never trains."""
        name:
            _name
        input:
            models=[run["model_dir"] for run in _plan],
            cohorts=sorted({c["cohort_path"] for run in _plan for c in run["cohorts"]}),
            features=sorted({f for run in _plan for c in run["cohorts"] for f in c["features"]}),
            code=evaluation_code(_dataset),
        output:
            predictions=[c["out"] for run in _plan for c in run["cohorts"]],
            costs=costs_path(_name),
        params:
            dataset=_dataset,
            plan=literal_param(canonical_json(_plan)),
        log:
            f"logs/evaluate/{_name}.log",
        benchmark:
            f"results/benchmarks/evaluate/{_name}.tsv"
        threads: rule_threads("evaluate")
        resources:
            **rule_resources("evaluate", mem_mb=4000),
        conda:
            "../envs/medmix.yaml"
        script:
            "../scripts/evaluate.py"
