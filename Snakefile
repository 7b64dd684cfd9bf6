# medmix: multimodal medical prediction under missing modalities.
# Stage 1 extracts per-modality expert embeddings into a Parquet cache; stage 2 trains and
# evaluates fusion methods from that cache and writes the tables.
from pathlib import Path

from snakemake.utils import min_version

min_version("8.4.9")  # pyproject.toml says why


# The base configuration: config.yaml in the folder Snakemake runs in, else this workflow's own (a run
# elsewhere with `-s path/to/medmix/Snakefile --configfile my.yaml`, as `medmix init` prints it).
configfile: "config.yaml" if Path("config.yaml").is_file() else str(Path(workflow.basedir, "config.yaml"))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/extract_common.smk"
include: "workflow/rules/cpimoe_common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/rag_common.smk"
include: "workflow/rules/rag.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/moirai.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/cpimoe.smk"
include: "workflow/rules/contribution.smk"


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    modality="[A-Za-z0-9_]+",
    expert="[A-Za-z0-9_]+",
    method=RUN_NAME_PATTERN,
    protocol="[A-Za-z0-9_]+",
    cohort="[A-Za-z0-9_]+",
    shard="[0-9]+",
    shards="[0-9]+",


rule all:
    input:
        all_targets(),
    default_target: True


# Config `resources.<rule>` must name a rule that reads it (`extract`: every extraction job).
check_resource_rules(config.get("resources", {}), sorted(RESOURCE_RULES))
