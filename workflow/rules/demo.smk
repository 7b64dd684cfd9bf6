rule demo_cohort:
    """Generate one deterministic synthetic demo cohort (images, notes, EHR, CT, labels)."""
    input:
        code=code_inputs("medmix.demo.generate"),
    output:
        directory("resources/demo/{cohort}"),
    params:
        kind=lambda wc: config["demo"]["cohorts"][wc.cohort]["kind"],
        n_patients=lambda wc: config["demo"]["cohorts"][wc.cohort]["n_patients"],
        seed=lambda wc: config["demo"]["cohorts"][wc.cohort]["seed"],
        shift=lambda wc: config["demo"]["cohorts"][wc.cohort]["shift"],
    log:
        "logs/demo_cohort/{cohort}.log",
    benchmark:
        "results/benchmarks/demo_cohort/{cohort}.tsv"
    threads: rule_threads("demo_cohort")
    resources:
        **rule_resources("demo_cohort", mem_mb=1000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/demo_cohort.py"
