rule extract:
    """Embed one modality of one dataset with one expert into one Parquet feature file.

    Reruns exactly when what the embeddings depend on changes: the expert's code (the closure of
    its module's imports), its identity params (model id, revision, preprocessing), the weights
    in its `local_dir` (file names, sizes, mtimes) and the inputs it reads (ids, inputs, each
    input file's name, size and mtime, and the modality's input schema: a series' variable list,
    a table's columns and training-split categories). The labels-free input view is `ancient`: rewriting it
    with the same inputs (a label or split edit) reruns nothing. Runtime settings travel as a
    resource and rerun nothing.
    """
    input:
        unpack(extract_hook_inputs),
        inputs=extract_view_input,
        code=lambda wc: expert_code(wc.expert),
    output:
        features="results/{dataset}/features/{modality}/{expert}.parquet",
    params:
        kind=lambda wc: modality_kind(wc.dataset, wc.modality),
        model_id=expert_param("model_id"),
        revision=expert_param("revision"),
        preprocessing=expert_param("preprocessing"),
        inputs=input_fingerprint_param,
        weights=weights_fingerprint,
        max_failed_fraction=str(config["extraction"]["max_failed_fraction"]),
    log:
        "logs/extract/{dataset}/{modality}/{expert}.log",
    benchmark:
        "results/benchmarks/extract/{dataset}/{modality}/{expert}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc: rule_resources("extract", mem_mb=get_spec(wc.expert).mem_mb)["mem_mb"],
        gpu=lambda wc: 1 if get_spec(wc.expert).gpu else 0,
        expert_runtime=expert_runtime_json,
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/extract.py"
