import json
import logging
import os
from pathlib import Path

from extractors.base import EMBEDDING_SETTINGS
from extractors.registry import get_spec
from medmix.plan.cache_report import expert_code_files
from medmix.plan.code_closure import closure_files
from medmix.plan.config import (
    ConfigError,
    canonical_json,
    check_resource_rules,
    committee,
    development_datasets,
    expert_identity,
    expert_runtime,
    extraction_jobs,
    feature_path,
    reference_dataset,
    run_spec,
    select_committee,
    training_params,
    validate_config,
)
from medmix.methods import get_method_class
from medmix.protocols import parse_protocols
from medmix.plan.runs import RUN_NAME_PATTERN, run_seeds
from medmix.plan.sweep import sweep_plan, sweep_seeds
from medmix.store import FeatureStoreError, read_metadata
from medmix.store.inputs import files_digest, folder_fingerprint, read_input_view

# A --configfile that declares datasets of its own runs those alone (medmix.plan.overlay, `include_demo`):
# config.yaml's demo datasets and cohorts, and its settings naming them or their modalities, are not
# inherited. Otherwise `config` stays Snakemake's merge.
from medmix.plan.overlay import workflow_config

_overlay_files = [str(f) for f in workflow.overwrite_configfiles]
_effective_config = workflow_config(
    [] if getattr(workflow.config_settings, "replace_workflow_config", False) else [str(f) for f in workflow.configfiles],
    _overlay_files,
    getattr(workflow.config_settings, "config", None),
)
if _effective_config is not None:
    config.clear()
    config.update(_effective_config)

# Schema (the file plus the registered adapters' own keys, medmix.plan.schema; defaults filled in)
# and semantic validation; an error names the offending key, and the files it came from.
try:
    validate_config(config)
except ConfigError as err:
    _files = [str(f) for f in workflow.configfiles if str(f) not in _overlay_files] + _overlay_files
    raise ConfigError(f"{err}\n(from {' + '.join(_files) or 'no config file'} in {Path.cwd()}; the base is "
                      "config.yaml in the folder Snakemake runs in, else the workflow's own)") from None


#: How input files are compared (config `inputs_check`): "stat" (name, size, mtime) or "content" (sha256).
CONTENT_CHECK = config["inputs_check"] == "content"

DATASETS = list(config["datasets"])
DEV_DATASETS = development_datasets(config)
TRAIN_PROTOCOLS = [p.name for p in parse_protocols(config["protocols"].get("train"))]
EXTRACTION_JOBS = extraction_jobs(config)
#: Hooks returning extra named inputs of an extraction job (e.g. a retrieval index); see rag.smk.
EXPERT_INPUT_HOOKS = []



def code_inputs(*modules):
    """The closure of the modules' imports inside the repository (medmix.plan.code_closure); `local`:
    never mapped to a default storage provider (the Kubernetes profile's)."""
    return [local(f) for f in closure_files(*modules)]


#: The names config `resources.<name>` may use: every rule_resources() / rule_threads() call adds its
#: own (the Snakefile checks the config against them once every rule is defined).
RESOURCE_RULES = set()


def rule_resources(rule_name, **defaults):
    """Default resources of a job of `rule_name` (`runtime`: 60 minutes unless given), overridden by config
    `resources.<rule>` (cluster profiles); a `threads` override there goes to `rule_threads`."""
    RESOURCE_RULES.add(rule_name)
    over = {k: v for k, v in config.get("resources", {}).get(rule_name, {}).items() if k != "threads"}
    return {"runtime": 60, **defaults, **over}


def rule_threads(rule_name, default=1):
    """A rule's threads: config `resources.<rule>.threads`, else ``default``."""
    RESOURCE_RULES.add(rule_name)
    return config.get("resources", {}).get(rule_name, {}).get("threads", default)


# ----------------------------------------------------------------------------- datasets
DATASET_FILE_KEYS = ("manifest", "reports_csv", "projections_csv", "cohort_csv", "clinical_csv")


def dataset_config(dataset):
    return config["datasets"][dataset]


#: Dataset keys that relate datasets or pick experts; they never change the cohort table.
NOT_COHORT_KEYS = ("external", "modality_roles")
NOT_COHORT_MODALITY_KEYS = ("committee", "teacher")


def cohort_settings(dataset):
    """The dataset's settings that decide its cohort table (a plain JSON string)."""
    ds = {k: v for k, v in dataset_config(dataset).items() if k not in NOT_COHORT_KEYS}
    if "modalities" in ds:
        ds["modalities"] = {
            m: {k: v for k, v in spec.items() if k not in NOT_COHORT_MODALITY_KEYS} for m, spec in ds["modalities"].items()
        }
    return canonical_json(ds)


def dataset_source(wildcards):
    """What the cohort table is built from: the demo folder for generated cohorts."""
    ds = dataset_config(wildcards.dataset)
    code = {"code": code_inputs("medmix.datasets", *ADAPTER_MODULES)}
    # An external cohort takes its input schemas from the development dataset that lists it.
    reference = reference_dataset(config, wildcards.dataset)
    if reference:
        code["reference"] = cohort_path(reference)
    if ds["adapter"] == "demo":
        return {"source": f"resources/demo/{wildcards.dataset}", **code}
    # Source tables of every adapter are inputs, so editing one rebuilds the cohort.
    files = {key: ds[key] for key in DATASET_FILE_KEYS if key in ds}
    return {**files, **code}


_SOURCE_DIGESTS = {}


def source_digest(wildcards):
    """With `inputs_check: content`, a param of prepare_dataset: the sha256 of the dataset's source tables
    and of the cohort table built from them at planning time (which holds the text of note files and
    reports), so a source edited in place, its mtime kept, rebuilds the cohort and input view before
    the extractions that read them. "" otherwise, and for the demo, whose folder the workflow writes."""
    dataset = wildcards.dataset
    ds = dataset_config(dataset)
    if not CONTENT_CHECK or ds["adapter"] == "demo":
        return ""
    if dataset not in _SOURCE_DIGESTS:
        source_view(dataset)  # records the cohort's digest when the source builds
        files = files_digest([ds[key] for key in DATASET_FILE_KEYS if key in ds])
        _SOURCE_DIGESTS[dataset] = f"{files}:{_SOURCE_COHORT_DIGESTS.get(dataset, 'unbuilt')}"
    return _SOURCE_DIGESTS[dataset]


ADAPTER_MODULES = sorted(
    f"medmix.datasets.{p.stem}" for p in (Path(workflow.basedir) / "medmix" / "datasets").glob("*.py") if p.stem != "__init__"
)


def cohort_path(dataset):
    return f"results/{dataset}/cohort.parquet"


def inputs_path(dataset):
    """The labels-free input view (ids + inputs) extraction reads."""
    return f"results/{dataset}/inputs.parquet"


# ----------------------------------------------------------------------------- extraction
def modality_kind(dataset, modality):
    return config["datasets"][dataset]["modalities"][modality]["kind"]


_SOURCE_VIEWS = {}


_SOURCE_COHORT_DIGESTS = {}


def cohort_digest(cohort):
    """sha256 of a cohort table's values (every column: ids, splits, labels, inputs) and settings."""
    import hashlib

    import pyarrow as pa

    from medmix.store.checksum import table_checksum

    table = pa.Table.from_pandas(cohort.frame.reset_index(drop=True), preserve_index=False)
    record = {"columns": table_checksum(table)["columns"], "name": cohort.name, "task": cohort.task,
              "labels": cohort.labels, "modalities": cohort.modalities, "schemas": cohort.schemas,
              "extra": cohort.extra}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def source_view(dataset):
    """The input view built from the dataset's own source at planning time, or None.

    Datasets whose source the workflow generates (the demo) and sources that do not build yet
    return None: their extraction jobs wait for the prepare_dataset checkpoint instead.
    """
    if dataset in _SOURCE_VIEWS:
        return _SOURCE_VIEWS[dataset]
    ds = dataset_config(dataset)
    view = None
    reference = reference_dataset(config, dataset)
    reference_view = source_view(reference) if reference else None
    if ds["adapter"] != "demo" and (reference is None or reference_view is not None):
        from medmix.datasets import build_cohort
        from medmix.datasets.schema import adopt_reference

        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            cohort = build_cohort(dataset, ds, ".")
            if reference:  # as prepare_dataset does with the reference cohort
                cohort = adopt_reference(cohort, reference_view.schemas, reference)
            view = cohort.input_view()
            if CONTENT_CHECK:
                _SOURCE_COHORT_DIGESTS[dataset] = cohort_digest(cohort)
        except Exception:  # noqa: BLE001 - prepare_dataset reports the error in its own log
            view = None
        finally:
            logging.disable(previous)
    if view is not None:
        _SOURCE_VIEWS[dataset] = view
    return view


def current_view(dataset):
    """The input view extraction will read: from the source, else from the checkpoint's output."""
    view = source_view(dataset)
    if view is None:
        checkpoints.prepare_dataset.get(dataset=dataset)  # raises until prepare_dataset is done
        view = read_input_view(inputs_path(dataset))
    return view


_FINGERPRINTS = {}


def view_stamp(dataset, view):
    """What identifies the view a fingerprint was computed from within this run: the source, or the
    view file's mtime (the checkpoint rewrites it)."""
    if _SOURCE_VIEWS.get(dataset) is view:
        return "source"
    return os.stat(inputs_path(dataset)).st_mtime_ns


def view_fingerprint(dataset, modality, content=CONTENT_CHECK):
    """Fingerprint of what an extraction of the modality reads (inputs + schema + each file's name, size
    and mtime, or with `inputs_check: content` its sha256). Computed once per (dataset, modality) and
    view in a run: every shard job of every expert asks."""
    view = current_view(dataset)
    key = (dataset, modality, content, view_stamp(dataset, view))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = view.fingerprint(modality, content=content)
    return _FINGERPRINTS[key]


def input_fingerprint_param(wildcards):
    return view_fingerprint(wildcards.dataset, wildcards.modality)


def recorded_fingerprint(path):
    """The input fingerprint a feature file recorded when it was written (None if absent)."""
    try:
        return read_metadata(path).get("input_fingerprint")
    except FeatureStoreError:  # absent or unreadable: the job runs anyway
        return None


def expert_code(expert):
    """Code inputs of an expert: the closure of its module's imports plus declared non-imported files
    (medmix.plan.cache_report.expert_code_files, which `medmix cache` fingerprints too), `local` as code_inputs'."""
    return [local(f) for f in expert_code_files(expert)]


def computed_from_current_inputs(recorded, fingerprint, stat_fingerprint):
    """Whether an output's recorded input fingerprint is that of the current inputs. Extraction jobs
    record the stat fingerprint (name, size, mtime); with `inputs_check: content` the rule's param is the
    content one, whose change reruns the job by itself, so either matches here."""
    return recorded is not None and recorded in {fingerprint, stat_fingerprint()}


def view_input(dataset, modality, output):
    """The input view, as an `ancient` input while the inputs it holds for the modality are
    those the output was computed from, so a rewrite with the same inputs (a label or split edit)
    reruns nothing; otherwise a plain input, so the job runs after and because of its rewrite."""
    fingerprint = view_fingerprint(dataset, modality)  # waits for the checkpoint where needed
    path = inputs_path(dataset)
    current = computed_from_current_inputs(recorded_fingerprint(output), fingerprint,
                                           lambda: view_fingerprint(dataset, modality, content=False))
    return ancient(path) if current else path


def extract_view_input(wildcards):
    return view_input(wildcards.dataset, wildcards.modality, feature_path(wildcards.dataset, wildcards.modality, wildcards.expert))


def extract_hook_inputs(wildcards):
    """Extra named inputs of an extraction job (e.g. a retrieval index). A separate input function
    from the view's, so they are planned even while the view waits for its checkpoint."""
    inputs = {}
    for hook in EXPERT_INPUT_HOOKS:
        inputs.update(hook(wildcards.dataset, wildcards.modality, wildcards.expert))
    return inputs


def expert_param(key):
    """A plain, output-affecting value of the wildcard's expert (rerun when it changes)."""

    def lookup(wildcards):
        return canonical_json(expert_identity(config, wildcards.expert)[key])

    return lookup


def weights_fingerprint(wildcards):
    """Names, sizes and mtimes of the files in the expert's `local_dir` (empty: hub cache at the revision)."""
    return folder_fingerprint(expert_runtime(config, wildcards.expert).get("local_dir"))


def expert_runtime_json(wildcards):
    """Runtime settings (batch size, device, workers, local_dir): passed as a resource, rerun nothing."""
    return canonical_json(expert_runtime(config, wildcards.expert))


def moirai_identity_args():
    """Output-affecting command-line arguments of the MOIRAI worker (a plain string)."""
    import shlex

    from extractors.registry import create_extractor

    ident = expert_identity(config, "moirai")
    runtime = {k: v for k, v in expert_runtime(config, "moirai").items() if k in ("local_dir", "options")}
    ex = create_extractor("moirai", {**runtime, **{k: ident[k] for k in EMBEDDING_SETTINGS}})
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
def committee_spec(dataset, run=None):
    """Per modality: the committee's [name, role] pairs and the teacher (or None); with ``run``, only
    what that run (a method or a variant) reads."""
    out = {}
    for mod in config["datasets"][dataset]["modalities"]:
        members, teacher = committee(config, dataset, mod)
        out[mod] = {"committee": [[m.name, m.role] for m in members], "teacher": teacher}
    return out if run is None else select_committee(out, run_spec(config, run), dataset)


def feature_keys(dataset, run=None):
    """``<modality>/<expert>`` of every feature file the dataset's fusion (or one run) reads, in a fixed order."""
    keys = []
    for mod, spec in committee_spec(dataset, run).items():
        for name in [n for n, _ in spec["committee"]] + ([spec["teacher"]] if spec["teacher"] else []):
            if f"{mod}/{name}" not in keys:
                keys.append(f"{mod}/{name}")
    return keys


def dataset_features(dataset, run=None):
    return [feature_path(dataset, *key.split("/")) for key in feature_keys(dataset, run)]


def identities_json(dataset, run=None):
    names = {key.split("/")[1] for key in feature_keys(dataset, run)}
    return canonical_json({n: expert_identity(config, n) for n in sorted(names)})


def method_code(run, job_module):
    """Code inputs of a fit / evaluate job: the closure of the run's method module and the job body's."""
    return code_inputs(get_method_class(run_spec(config, run).method).__module__, job_module)


def train_protocol_spec(dataset, protocol):
    """A train protocol's spec: `protocols.train`, else the missing grid's (medmix.plan.missing_grid)."""
    from medmix.plan import missing_grid

    return missing_grid.train_protocol_spec(config, dataset, protocol)


def test_protocol_specs(dataset, method, protocol):
    """`protocols.test` plus a missing-grid run's matching test protocol (medmix.plan.missing_grid),
    less the `drop_one` protocols of modalities the run does not read (a sweep run or a variant on a
    subset of the modalities: there is nothing to drop, so no rows either)."""
    from medmix.plan import missing_grid

    specs = missing_grid.test_protocol_specs(config, dataset, method, protocol)
    read = list(committee_spec(dataset, method))
    return {name: spec for name, spec in specs.items() if missing_grid.applies(spec, read)}


def train_protocols(dataset):
    """`none` plus the `protocols.train` entries that apply to the dataset (drop_one: its modality exists)."""
    from medmix.plan import missing_grid

    return [p.name for p in parse_protocols(missing_grid.own_protocols(config, dataset, "train"))]


def stage_dirs(dataset, method, protocol):
    """The pre-training stages a staged method's fit under train protocol ``protocol`` reads (the
    ``stages`` job's folder; empty for other methods): they see what that protocol leaves of the
    training split."""
    from medmix.pipeline.stage import stage_module, stage_owner

    method = run_spec(config, method).method
    if stage_module(method) is None:
        return []
    return [f"results/{dataset}/stages/{stage_owner(method)}/{protocol}"]


def run_dir(dataset, method, protocol):
    return f"results/{dataset}/runs/{method}/{protocol}"


def prediction_path(dataset, run, protocol, cohort):
    """A run's predictions on one cohort (written by the dataset's evaluate job)."""
    return f"{run_dir(dataset, run, protocol)}/predictions/{cohort}.parquet"


def evaluation_cohorts(dataset):
    return [dataset, *dataset_config(dataset).get("external", [])]


def prediction_files():
    return [
        prediction_path(d, m, p, c)
        for d in DEV_DATASETS
        for m in config["methods"]
        for p in train_protocols(d)
        for c in evaluation_cohorts(d)
    ]


def sweep_prediction_files():
    """Clean-run (train protocol `none`) test-cohort predictions of the sweep's runs and of the
    swept methods' own runs (medmix.plan.sweep; empty while `sweep.methods` is empty)."""
    return sorted({prediction_path(d, run, "none", d)
                   for d, methods in sweep_plan(config).items()
                   for spec in methods.values() for run in spec["runs"].values()})


def evaluation_runs(dataset):
    """(run, train protocol, cohorts) of every fitted run of development dataset `dataset`, in a fixed
    order: the tables' runs on the dataset and its external cohorts, then the sweep's and the missing
    grid's other runs on the dataset (medmix.plan.sweep, medmix.plan.missing_grid)."""
    from medmix.plan import missing_grid

    rows = {(m, p): evaluation_cohorts(dataset) for m in config["methods"] for p in train_protocols(dataset)}
    extra = [(run, "none") for spec in sweep_plan(config).get(dataset, {}).values() for run in spec["runs"].values()]
    extra += [(m, p) for d, m, p in missing_grid.grid_runs(config) if d == dataset]
    for key in extra:
        rows.setdefault(key, [dataset])
    return [(run, protocol, cohorts) for (run, protocol), cohorts in rows.items()]


def evaluation_plan(dataset):
    """The `evaluate_<dataset>` job's work (medmix.pipeline.fit.evaluate_dataset_job): per run its model,
    test protocols, whether its deployment cost is measured (the tables' clean runs, Table E6) and, per
    cohort, what it reads and the predictions file it writes."""
    plan = []
    for run, protocol, cohorts in evaluation_runs(dataset):
        folder = run_dir(dataset, run, protocol)
        plan.append({
            "run": run, "train_protocol": protocol, "model_dir": f"{folder}/model",
            "test_protocols": test_protocol_specs(dataset, run, protocol),
            "cost": run in config["methods"] and protocol == "none",
            "cohorts": [{"cohort": c, "cohort_path": cohort_path(c), "committee": committee_spec(c, run),
                         "feature_keys": feature_keys(c, run), "features": dataset_features(c, run),
                         "identities": json.loads(identities_json(c, run)),
                         "out": prediction_path(dataset, run, protocol, c)} for c in cohorts],
        })
    return plan


def evaluation_code(dataset):
    """Code inputs of an `evaluate_<dataset>` job: the closures of its runs' method modules and the job body."""
    runs = evaluation_runs(dataset)
    return code_inputs(*sorted({get_method_class(run_spec(config, run).method).__module__ for run, _, _ in runs}),
                       "medmix.pipeline.fit")


def literal_param(value):
    """A params value used as is (a plain string with braces, e.g. JSON, is not a wildcard pattern)."""
    return lambda wildcards: value


def evaluation_parts(dataset):
    """The dataset's evaluation plan in parts of `evaluation.runs_per_job` runs (0: one part), one
    evaluate job each: `evaluate_<dataset>`, or `evaluate_<dataset>_<k>` when there are several."""
    plan = evaluation_plan(dataset)
    size = int(config.get("evaluation", {}).get("runs_per_job", 0)) or max(1, len(plan))
    parts = [plan[i : i + size] for i in range(0, len(plan), size)] or [[]]
    names = [f"evaluate_{dataset}" if len(parts) == 1 else f"evaluate_{dataset}_{k}" for k in range(len(parts))]
    return list(zip(names, parts))


def costs_path(rule_name):
    """Deployment cost records (Table E6) of the tables' runs an evaluate job measured."""
    dataset_and_part = rule_name.removeprefix("evaluate_")
    return f"results/costs/{dataset_and_part}.json"


def costs_files():
    return [costs_path(name) for d in DEV_DATASETS for name, _ in evaluation_parts(d)]


#: Hooks returning extra targets of `all` (e.g. the CP-IMoE tables, see cpimoe.smk).
TARGET_HOOKS = []


def contribution_targets():
    """The subset / contribution tables when the sweep is on (contribution.smk)."""
    return ["results/tables/contribution.md"] if sweep_prediction_files() else []


TARGET_HOOKS.append(contribution_targets)


def all_targets():
    return [
        *[f"results/{d}/summary.json" for d in DATASETS],
        *[feature_path(d, m, e) for d, m, e in EXTRACTION_JOBS],
        *prediction_files(),
        "results/tables/main.md",
        *[t for hook in TARGET_HOOKS for t in hook()],
    ]


#: Every table (the one list: medmix.evaluation.paper_tables.table_specs, new tables included) and
#: figure (medmix.evaluation.figures.FIGURES) the tables job writes, and the modules that build them.
from medmix.evaluation.figures import FIGURES
from medmix.evaluation.paper_tables import table_modules, table_specs

PAPER_TABLE_FILES = [f"results/tables/{spec.name}.{ext}" for spec in table_specs() for ext in ("md", "tex", "csv")]
FIGURE_FILES = [f"results/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]
TABLE_MODULES = table_modules()


def table_output(path):
    """A table file of the tables rule: its CSV goes into the report, with its caption when
    workflow/report/ has one (a table added as a module may have none yet)."""
    if not path.endswith(".csv"):
        return path
    caption = Path(workflow.basedir) / "workflow" / "report" / f"{Path(path).stem}.rst"
    extra = {"caption": f"../report/{caption.name}"} if caption.is_file() else {}
    return report(path, category="Tables", subcategory="Paper tables", **extra)


def clean_fit_keys():
    """[dataset, run] of every clean run (train protocol `none`) of the development datasets (Table E6)."""
    return [[d, m] for d in DEV_DATASETS for m in config["methods"]]


def expert_costs_json():
    """dataset -> run -> the deployed experts' declared costs (registry ExpertSpec; Table E6), a plain
    JSON string. Deployed: medmix.evaluation.efficiency_table.deployed_experts (no RAG, no teachers)."""
    from medmix.evaluation.efficiency_table import deployed_experts

    out = {}
    for d, m in clean_fit_keys():
        pairs = deployed_experts(committee_spec(d, m), run_spec(config, m).method)
        out.setdefault(d, {})[m] = [{"modality": mod, "name": name, "role": get_spec(name).role,
                                     **get_spec(name).cost()} for mod, name in pairs]
    return canonical_json(out)


def run_methods():
    """Run name -> registered method, for each configured run in config order."""
    return {r: run_spec(config, r).method for r in config["methods"]}


def run_methods_json():
    """[run, registered method] of each configured run, in config order (the tables tell MedMIX
    ablations apart by the method and order their rows by the list)."""
    return canonical_json([[r, m] for r, m in run_methods().items()])


def improvements_json():
    """The configured runs whose method is an improvement beyond the paper (marked in the tables;
    asked of the registry here, so that the tables job need not import every method)."""
    from medmix.evaluation.paper_tables import improvement_runs

    return canonical_json(sorted(improvement_runs(run_methods())))


def table_protocols_json():
    """The configured train / test protocols (the missing grid's own are CP-IMoE's tables')."""
    section = config.get("protocols", {})
    return canonical_json({"train": section.get("train", {}), "test": section.get("test", {})})
