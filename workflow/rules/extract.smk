rule extract:
    """Embed one modality of one dataset with one expert into one Parquet feature file.

    params carry only output-affecting plain values (model id, revision, preprocessing), so a
    change to one expert reruns only its jobs; runtime settings (batch size, device) do not.
    """
    input:
        unpack(extract_inputs),
    output:
        features="results/{dataset}/features/{modality}/{expert}.parquet",
    params:
        kind=lambda wc: modality_kind(wc.dataset, wc.modality),
        model_id=expert_param("model_id"),
        revision=expert_param("revision"),
        preprocessing=expert_param("preprocessing"),
    log:
        "logs/extract/{dataset}/{modality}/{expert}.log",
    benchmark:
        "results/benchmarks/extract/{dataset}/{modality}/{expert}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc: rule_resources("extract", mem_mb=get_spec(wc.expert).mem_mb)["mem_mb"],
        gpu=lambda wc: 1 if get_spec(wc.expert).gpu else 0,
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/extract.py"
