# Helpers of the extraction rules (extract.smk): resources, shard plans and inputs.
import os

from medmix.plan.config import EXTRACTION_RESOURCES, expert_shards, extraction_resources
from medmix.store.inputs import input_fingerprint
from medmix.store.shards import part_path, shard_rows

RESOURCE_RULES.add(EXTRACTION_RESOURCES)

#: Experts whose extraction is split into shards (merge_shards writes their feature files).
SHARDED_EXPERTS = sorted({e for _, _, e in EXTRACTION_JOBS if expert_shards(config, e) > 1})


def extract_resource(key):
    """One resource of an extraction job of the wildcard's expert (extraction_resources: the
    registry's declaration, then config `resources.extract`, then `extraction.experts.<name>`)."""

    def lookup(wildcards):
        return extraction_resources(config, wildcards.expert)[key]

    return lookup


def extract_threads(wildcards):
    return extraction_resources(config, wildcards.expert)["threads"]


_SHARD_FINGERPRINTS = {}


def shard_fingerprints(dataset, modality, shards, content=CONTENT_CHECK):
    """Input fingerprint of every shard of one modality (one pass over its files, cached per view;
    with `inputs_check: content`, `content`: by the files' sha256 instead of their mtimes)."""
    view = current_view(dataset)  # waits for the checkpoint where needed
    key = (dataset, modality, shards, content, view_stamp(dataset, view))
    if key not in _SHARD_FINGERPRINTS:
        ids, values, kind, schema = view.sample_ids, view.inputs(modality), view.kinds[modality], view.schema(modality)
        _SHARD_FINGERPRINTS[key] = [
            input_fingerprint([ids[i] for i in rows], [values[i] for i in rows], kind, schema, content=content)
            for rows in shard_rows(ids, shards)
        ]
    return _SHARD_FINGERPRINTS[key]


def shard_fingerprint_param(wildcards):
    return shard_fingerprints(wildcards.dataset, wildcards.modality, int(wildcards.shards))[int(wildcards.shard)]


def shard_view_input(wildcards):
    """The input view, `ancient` while the part was computed from the shard's current inputs
    (so an edit of another shard's input file, a label or a split reruns nothing here)."""
    fingerprint = shard_fingerprint_param(wildcards)
    path = inputs_path(wildcards.dataset)
    stat = lambda: shard_fingerprints(wildcards.dataset, wildcards.modality, int(wildcards.shards),
                                      content=False)[int(wildcards.shard)]
    return ancient(path) if computed_from_current_inputs(recorded_fingerprint(shard_part(wildcards)), fingerprint,
                                                         stat) else path


def shard_part(wildcards):
    return part_path(wildcards.dataset, wildcards.modality, wildcards.expert, int(wildcards.shard), int(wildcards.shards))


def shard_parts(wildcards):
    n = expert_shards(config, wildcards.expert)
    return [part_path(wildcards.dataset, wildcards.modality, wildcards.expert, k, n) for k in range(n)]


# -- models fetched by `medmix fetch` (extractors/fetch.py): the online/offline rule and the lock --
import sys

from extractors.fetch import requirements as model_requirements
from extractors.hf_common import LOCK_ENV, OFFLINE_ENV, lock_path, locked_commit

# `experts.offline` (default true) is the one online/offline rule of every loader of every job
# (experts, teachers, RAG encoders, projection, bridges; extractors.hf_common.offline_mode): true,
# they read only the Hugging Face cache that `medmix fetch` filled, or `local_dir`; false, they may
# download. A per-expert `experts.settings.<name>.options.offline` overrides it.
os.environ[OFFLINE_ENV] = "1" if config["experts"].get("offline", True) else "0"
os.environ.setdefault(LOCK_ENV, str(lock_path().resolve()))

_LOCKED_COMMITS = {}
_WARNED_UNLOCKED = set()


def expert_locked_commits(expert):
    """{model id: commit} of the hub models of `expert` (its encoders, language model and bridges
    included) whose revision is `main`-like, as medmix.lock.json records them. A model with no
    locked commit is read at its branch; the run warns once per model with the fix."""
    if expert not in _LOCKED_COMMITS:
        if expert_runtime(config, expert).get("local_dir"):
            _LOCKED_COMMITS[expert] = {}
            return _LOCKED_COMMITS[expert]
        commits = {}
        for req in model_requirements([expert], config["experts"].get("settings") or {}, rag=config.get("rag") or {}):
            if not req.fetchable or req.pinned:
                continue
            commit = locked_commit(req.model_id, req.revision)
            if commit:
                commits[req.model_id] = commit
            elif (req.model_id, req.revision) not in _WARNED_UNLOCKED:
                _WARNED_UNLOCKED.add((req.model_id, req.revision))
                print(f"medmix: expert {expert}: revision {req.revision!r} of {req.model_id} is not a pinned commit "
                      f"and not in {lock_path()}; run `medmix fetch --yes` (downloads it and records the commit) or "
                      f"pin a 40-hex commit (experts.settings.{expert}.revision), so that the run is reproducible",
                      file=sys.stderr)
        _LOCKED_COMMITS[expert] = commits
    return _LOCKED_COMMITS[expert]


def locked_commits_param(wildcards):
    """The `locked_commits` param of the extraction rules: the commits medmix.lock.json resolves the
    expert's `main`-like revisions to (canonical JSON; "" when none). A changed locked commit reruns
    that expert's jobs and nothing else."""
    commits = expert_locked_commits(wildcards.expert)
    return canonical_json(commits) if commits else ""


# Experts outside the main environment (MOIRAI's worker) take the locked commit through their own
# rule params (moirai_identity_args); their unlocked `main` revisions are warned about here.
for _expert in sorted({e for _, _, e in EXTRACTION_JOBS if get_spec(e).environment != "main"}):
    expert_locked_commits(_expert)
