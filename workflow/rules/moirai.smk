# MOIRAI (uni2ts pins torch<2.5 and numpy 1.26) runs in its own conda environment, in three steps:
# export the prepared series (main env) -> embed them (workflow/envs/moirai.yaml) -> write the
# feature file (main env). Needs `snakemake --sdm conda`; the default demo never uses MOIRAI.


ruleorder: moirai_features > extract


rule moirai_export:
    """Prepare every present series of one modality for the MOIRAI worker."""
    input:
        inputs=lambda wc: view_input(wc.dataset, wc.modality, feature_path(wc.dataset, wc.modality, "moirai")),
        code=expert_code("moirai"),
    output:
        series=temp("results/{dataset}/moirai/{modality}/series.npz"),
        failures="results/{dataset}/moirai/{modality}/failures.json",
    params:
        **{key: canonical_json(expert_identity(config, "moirai")[key]) for key in EMBEDDING_SETTINGS},
        inputs=input_fingerprint_param,
    resources:
        expert_runtime=canonical_json(expert_runtime(config, "moirai")),
    log:
        "logs/moirai_export/{dataset}/{modality}.log",
    benchmark:
        "results/benchmarks/moirai_export/{dataset}/{modality}.tsv"
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/moirai_export.py"


rule moirai_embed:
    """Embed the exported series with MOIRAI in its own environment."""
    input:
        series="results/{dataset}/moirai/{modality}/series.npz",
        worker=str(Path(workflow.basedir) / "extractors" / "moirai_worker.py"),
    output:
        embeddings=temp("results/{dataset}/moirai/{modality}/embeddings.npz"),
    params:
        identity=moirai_identity_args(),
    log:
        "logs/moirai_embed/{dataset}/{modality}.log",
    benchmark:
        "results/benchmarks/moirai_embed/{dataset}/{modality}.tsv"
    threads: rule_threads("moirai_embed")
    resources:
        # Runtime settings travel as resources, so changing them reruns nothing.
        batch_size=moirai_runtime("batch_size", 16),
        device=moirai_runtime("device", "auto"),
        gpu=1,
        mem_mb=rule_resources("moirai_embed", mem_mb=8000)["mem_mb"],
    conda:
        "../envs/moirai.yaml"
    # Every value is shell-quoted (:q); params.identity is already a shlex-quoted argument string.
    shell:
        "python {input.worker:q} --input {input.series:q} --output {output.embeddings:q} {params.identity}"
        " --batch-size {resources.batch_size:q} --device {resources.device:q} > {log:q} 2>&1"


rule moirai_features:
    """The MOIRAI feature file from the worker's embeddings (absent rows where inputs failed)."""
    input:
        inputs=lambda wc: inputs_path(wc.dataset),
        embeddings="results/{dataset}/moirai/{modality}/embeddings.npz",
        failures="results/{dataset}/moirai/{modality}/failures.json",
    output:
        features="results/{dataset}/features/{modality}/moirai.parquet",
    params:
        **{key: canonical_json(expert_identity(config, "moirai")[key]) for key in EMBEDDING_SETTINGS},
    log:
        "logs/extract/{dataset}/{modality}/moirai.log",
    benchmark:
        "results/benchmarks/moirai_features/{dataset}/{modality}.tsv"
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/moirai_features.py"
