import json
from pathlib import Path

from snakemake.utils import validate

from extractors.registry import get_spec, source_files
from medmix.config import (
    canonical_json,
    committee,
    development_datasets,
    expert_identity,
    expert_runtime,
    extraction_jobs,
    feature_path,
    training_params,
    validate_config,
)
from medmix.methods import get_method_class
from medmix.protocols import parse_protocols

# Semantic validation names the offending key; the schema pass fills in its defaults.
validate_config(config)
validate(config, "../schemas/config.schema.yaml")



DATASETS = list(config["datasets"])
DEV_DATASETS = development_datasets(config)
TRAIN_PROTOCOLS = [p.name for p in parse_protocols(config["protocols"].get("train"))]
TEST_PROTOCOLS = parse_protocols(config["protocols"].get("test"))
EXTRACTION_JOBS = extraction_jobs(config)
#: Hooks returning extra named inputs of an extraction job (e.g. a retrieval index); see rag.smk.
EXPERT_INPUT_HOOKS = []


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    modality="[A-Za-z0-9_]+",
    expert="[A-Za-z0-9_]+",
    method="[A-Za-z0-9_]+",
    protocol="[A-Za-z0-9_]+",
    cohort="[A-Za-z0-9_]+",


def package_sources(*patterns):
    """Package modules a rule's output depends on: inputs, so that editing them reruns the rule."""
    root = Path(workflow.basedir)
    return sorted(str(p) for pattern in patterns for p in root.glob(pattern))


def rule_resources(rule_name, **defaults):
    """Default resources of a rule, overridden by config `resources.<rule>` (cluster profiles)."""
    return {**defaults, **config.get("resources", {}).get(rule_name, {})}


# ----------------------------------------------------------------------------- datasets
DATASET_FILE_KEYS = ("manifest", "reports_csv", "projections_csv", "cohort_csv", "clinical_csv")


def dataset_config(dataset):
    return config["datasets"][dataset]


def dataset_source(wildcards):
    """What the cohort table is built from: the demo folder for generated cohorts."""
    ds = dataset_config(wildcards.dataset)
    code = {"code": package_sources("medmix/cohort.py", "medmix/datasets/*.py")}
    if ds["adapter"] == "demo":
        return {"source": f"resources/demo/{wildcards.dataset}", **code}
    # Source tables of every adapter are inputs, so editing one rebuilds the cohort.
    files = {key: ds[key] for key in DATASET_FILE_KEYS if key in ds}
    return {**files, **code}


def cohort_path(dataset):
    return f"results/{dataset}/cohort.parquet"


# ----------------------------------------------------------------------------- extraction
def modality_kind(dataset, modality):
    return config["datasets"][dataset]["modalities"][modality]["kind"]


def extract_inputs(wildcards):
    inputs = {"cohort": cohort_path(wildcards.dataset), "code": source_files(wildcards.expert)}
    for hook in EXPERT_INPUT_HOOKS:
        inputs.update(hook(wildcards.dataset, wildcards.modality, wildcards.expert))
    return inputs


def expert_param(key):
    """A plain, output-affecting value of the wildcard's expert (rerun when it changes)."""

    def lookup(wildcards):
        value = expert_identity(config, wildcards.expert)[key]
        return canonical_json(value) if key == "preprocessing" else str(value)

    return lookup


def moirai_identity_args():
    """Output-affecting command-line arguments of the MOIRAI worker (a plain string)."""
    import shlex

    from extractors.registry import create_extractor

    ident = expert_identity(config, "moirai")
    runtime = {k: v for k, v in expert_runtime(config, "moirai").items() if k in ("local_dir", "options")}
    ex = create_extractor("moirai", {**runtime, **{k: ident[k] for k in ("model_id", "revision", "preprocessing")}})
    args, skip = [], {"--batch-size", "--device"}
    worker = ex.worker_args()
    i = 0
    while i < len(worker):
        if worker[i] in skip:
            i += 2
            continue
        args.append(worker[i])
        i += 1
    return " ".join(shlex.quote(a) for a in args)


def moirai_runtime(key, default):
    return expert_runtime(config, "moirai").get(key, default)


# ----------------------------------------------------------------------------- fusion
def committee_json(dataset):
    """The committee (per modality: experts with roles, teacher) as a canonical JSON string."""
    out = {}
    for mod in config["datasets"][dataset]["modalities"]:
        members, teacher = committee(config, dataset, mod)
        out[mod] = {"committee": [[m.name, m.role] for m in members], "teacher": teacher}
    return canonical_json(out)


def dataset_features(dataset):
    return [feature_path(d, m, e) for d, m, e in EXTRACTION_JOBS if d == dataset]


def fit_inputs(wildcards):
    ds = dataset_config(wildcards.dataset)
    inputs = {
        "cohort": cohort_path(wildcards.dataset),
        "features": dataset_features(wildcards.dataset),
        "code": method_sources(wildcards.method),
    }
    for ext in ds.get("external", []):
        inputs[f"external_cohort_{ext}"] = cohort_path(ext)
        inputs[f"external_features_{ext}"] = dataset_features(ext)
    return inputs


def method_sources(method):
    """The method's own module plus the shared fit path (data, training, pipeline)."""
    import inspect

    own = inspect.getsourcefile(get_method_class(method))
    shared = package_sources("medmix/data.py", "medmix/features.py", "medmix/protocols.py",
                             "medmix/pipeline/fit.py", "medmix/training/*.py", "medmix/models/*.py")
    return sorted({own, *shared})


def run_dir(dataset, method, protocol):
    return f"results/{dataset}/runs/{method}/{protocol}"


def fit_outputs():
    return [
        f"{run_dir(d, m, p)}/predictions.parquet"
        for d in DEV_DATASETS
        for m in config["methods"]
        for p in TRAIN_PROTOCOLS
    ]


def all_targets():
    return [
        *[f"results/{d}/summary.json" for d in DATASETS],
        *[feature_path(d, m, e) for d, m, e in EXTRACTION_JOBS],
        *fit_outputs(),
        "results/tables/main.md",
    ]
