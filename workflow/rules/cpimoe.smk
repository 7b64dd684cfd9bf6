# CP-IMoE (medmix.methods.cpimoe): its pre-training stages as cached jobs, and the supplementary's
# missing grid (medmix.missing_grid) with its tables and router-weight figures.
import json

from medmix import missing_grid
from medmix.pipeline.stage import stage_module

GRID_RUNS = missing_grid.grid_runs(config)
GRID_CELLS = missing_grid.grid_cells(config)


wildcard_constraints:
    stage="[A-Za-z0-9_]+",


def stage_needs(wildcards):
    plan = stage_module(wildcards.method).stage_plan(list(dataset_config(wildcards.dataset)["modalities"]))
    if wildcards.stage not in plan:
        raise ValueError(f"{wildcards.method}: no stage {wildcards.stage!r} on {wildcards.dataset}; stages: {list(plan)}")
    return [f"results/{wildcards.dataset}/stages/{wildcards.method}/{s}" for s in plan[wildcards.stage]]


def stage_code(wildcards):
    return code_inputs(stage_module(wildcards.method).__name__, "medmix.pipeline.stage")


rule stage:
    """One pre-training stage of a staged method (CP-IMoE: specific_<m>, redundant, synergistic),
    for every seed; shared by every train protocol and by the methods with this stage owner."""
    input:
        cohort=lambda wc: cohort_path(wc.dataset),
        features=lambda wc: dataset_features(wc.dataset),
        needs=stage_needs,
        code=stage_code,
    output:
        stage=directory("results/{dataset}/stages/{method}/{stage}"),
    params:
        committee=lambda wc: canonical_json(committee_spec(wc.dataset)),
        feature_keys=lambda wc: canonical_json(feature_keys(wc.dataset)),
        identities=lambda wc: identities_json(wc.dataset),
        training=lambda wc: canonical_json(stage_module(wc.method).stage_params(training_params(config, wc.method))),
        seeds=canonical_json(config["seeds"]),
    log:
        "logs/stage/{dataset}/{method}/{stage}.log",
    benchmark:
        "results/benchmarks/stage/{dataset}/{method}/{stage}.tsv"
    threads: 1
    resources:
        **rule_resources("stage", mem_mb=4000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/stage.py"


def grid_prediction_files():
    return [f"{run_dir(d, m, p)}/predictions/{d}.parquet" for d, m, p in GRID_RUNS]


def grid_figures():
    g = missing_grid.grid(config)
    methods = [m for m in g.get("figure_methods", []) if m in missing_grid.grid_methods(config)]
    return {f"{d}/{m}": f"results/tables/cpimoe/router_{d}_{m}.png" for d in missing_grid.grid_datasets(config) for m in methods}


def complexity_run(dataset):
    """A fitted CP-IMoE run of the grid on ``dataset`` (Table S2), or None."""
    return next((run_dir(d, m, p) for d, m, p in GRID_RUNS if d == dataset and m == "cpimoe"), None)


def complexity_inputs():
    return {d: f"{complexity_run(d)}/model" for d in missing_grid.grid_datasets(config) if complexity_run(d)}


def complexity_spec():
    return canonical_json({d: {"model_dir": model, "cohort_path": cohort_path(d), "committee": committee_spec(d),
                               "features": dict(zip(feature_keys(d), dataset_features(d), strict=True)),
                               "identities": json.loads(identities_json(d))}
                           for d, model in complexity_inputs().items()})


rule cpimoe_tables:
    """Table S3-style grid table, per-class F1, Table S2 (FLOP counter) and router heatmaps."""
    input:
        predictions=grid_prediction_files(),
        models=list(complexity_inputs().values()),
        features=sorted({f for d in complexity_inputs() for f in dataset_features(d)}),
        code=code_inputs("medmix.evaluation.cpimoe_tables", "medmix.missing_grid"),
    output:
        table_s3="results/tables/cpimoe/table_s3.md",
        per_class="results/tables/cpimoe/per_class_f1.md",
        metrics="results/tables/cpimoe/grid_metrics.csv",
        gates="results/tables/cpimoe/router_weights.csv",
        table_s2="results/tables/cpimoe/table_s2.md",
        figures=list(grid_figures().values()),
    params:
        cells=canonical_json(GRID_CELLS),
        mode=missing_grid.grid(config).get("mode", "train_and_test"),
        seeds=canonical_json(config["seeds"]),
        tasks=canonical_json({d: dataset_config(d)["task"] for d in DATASETS}),
        figure_methods=canonical_json(missing_grid.grid(config).get("figure_methods", [])),
        figure_keys=canonical_json(list(grid_figures())),
        complexity=lambda wc: complexity_spec(),
        batch_size=lambda wc: training_params(config, "cpimoe")["batch_size"],
    log:
        "logs/cpimoe_tables.log",
    benchmark:
        "results/benchmarks/cpimoe_tables.tsv"
    resources:
        **rule_resources("cpimoe_tables", mem_mb=2000),
    conda:
        "../envs/medmix.yaml"
    script:
        "../scripts/cpimoe_tables.py"


def cpimoe_targets():
    return ["results/tables/cpimoe/table_s3.md"] if GRID_RUNS else []


TARGET_HOOKS.append(cpimoe_targets)
