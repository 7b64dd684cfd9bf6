# Helpers of the CP-IMoE rules (cpimoe.smk): pre-training stage inputs, the missing grid (medmix.plan.missing_grid),
# its tables and router-weight figures.
import json

from medmix.plan import missing_grid
from medmix.pipeline.stage import stage_module

GRID_RUNS = missing_grid.grid_runs(config)
GRID_CELLS = missing_grid.grid_cells(config)


def stage_code(wildcards):
    return code_inputs(stage_module(wildcards.method).__name__, "medmix.pipeline.stage")


def grid_prediction_files():
    return [prediction_path(d, m, p, d) for d, m, p in GRID_RUNS]


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


def cpimoe_targets():
    return ["results/tables/cpimoe/table_s3.md"] if GRID_RUNS else []


TARGET_HOOKS.append(cpimoe_targets)
