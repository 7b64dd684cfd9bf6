"""Load, validate and resolve the pipeline configuration (config.yaml).

Schema validation (with defaults) uses ``medmix/schemas/config.schema.yaml`` (shipped with the package;
``workflow/schemas/config.schema.yaml`` links to it); semantic checks
(unknown experts, kinds an expert cannot read, dangling references) follow. Every error names
the offending key. The resolvers here are the single place where the workflow, the scripts and
the CLI look up committees, expert identities and output paths.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medmix.plan.runs import RunSpec, check_name, check_run_name, run_spec, run_specs, select_committee
from medmix.plan.schema import config_schema

__all__ = ["ConfigError", "Member", "RunSpec", "load_config", "run_spec", "run_specs", "select_committee",
           "training_params", "validate_config"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what was expected."""


@dataclass(frozen=True)
class Member:
    name: str
    role: str


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        cfg = yaml.safe_load(fh) or {}
    return validate_config(cfg)


def _format_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def validate_schema(cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON-schema validation that fills in defaults (in place) and names the offending key.

    Every block of the schema is closed: an unknown key (a typo) is an error that names the key,
    where it is, and the closest valid key there.
    """
    import jsonschema

    schema = config_schema()
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    validator = jsonschema.validators.extend(base, {"properties": set_defaults})(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    # Sorted by key, so that e.g. a wrong `adapter` comes before the keys that adapter does not know.
    lines = sorted(line for e in errors for line in _explain(validator, schema, e))
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines[:10]))
    return cfg


def _explain(validator, root: dict[str, Any], error) -> list[str]:
    """Lines for one schema error: an unknown key with the closest valid one, else the key and message."""
    where = _format_path(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(error.instance, dict):
        allowed = _allowed_keys(validator, root, error.schema, error.instance)
        unknown = [k for k in error.instance if k not in allowed]
        return [_unknown_key(_format_path([*error.absolute_path, k]), k, allowed) for k in unknown]
    if "propertyNames" in error.schema_path and error.validator == "enum":  # a key outside a fixed set
        return [_unknown_key(_format_path([*error.absolute_path, error.instance]), error.instance,
                             [str(v) for v in error.validator_value])]
    if error.validator == "enum" and isinstance(error.instance, str):
        hint = _closest(error.instance, [str(v) for v in error.validator_value])
        return [f"config key `{where}`: {error.message}" + (f"; did you mean {hint!r}?" if hint else "")]
    return [f"config key `{where}`: {error.message}"]


def _unknown_key(where: str, key: str, allowed) -> str:
    hint = _closest(key, allowed)
    valid = ", ".join(sorted(allowed)) or "none"
    return f"config key `{where}`: unknown key {key!r}" + (f"; did you mean {hint!r}?" if hint else "") + \
        f" (valid keys here: {valid})"


def check_resource_rules(resources: dict[str, Any], rules: Sequence[str]) -> None:
    """Each ``resources.<rule>`` key names one of the workflow's ``rules`` (a misspelt or retired
    rule name would otherwise be ignored without a word: its jobs would run on the defaults)."""
    lines = [_unknown_key(f"resources.{key}", key, rules) for key in resources if key not in rules]
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines).replace("unknown key", "unknown rule")
                          + f"\n(`resources.{EXTRACTION_RESOURCES}` applies to every extraction job, "
                            "`extraction.experts.<expert>` to one expert's)")


def method_owned_keys() -> dict[str, list[str]]:
    """Each key a method declares as its own (``FusionMethod.param_schema``) -> the methods that read it."""
    from medmix.methods import get_method_class, known_methods

    owners: dict[str, list[str]] = {}
    for name in known_methods():
        if "<" not in name:
            for key in get_method_class(name).param_schema:
                owners.setdefault(key, []).append(name)
    return owners


def _check_method_owned_keys(cfg: dict[str, Any]) -> None:
    """A method's own setting in the global ``training`` block is an error that says where it goes."""
    owners = method_owned_keys()
    for key in sorted(set(cfg.get("training") or {}) & set(owners)):
        raise ConfigError(f"config key `training.{key}`: {key!r} is a setting of {', '.join(owners[key])} alone; "
                          f"set it under `method_params.{owners[key][0]}` (or that run's `method_params` / variant "
                          "`params`)")


def _check_method_params(method: str, params: dict[str, Any], cfg: dict[str, Any], where: str | None = None) -> None:
    """``method_params.<method>`` (or a variant's ``params``) holds ``training`` keys and the method's own
    ``extra_params``."""
    from dataclasses import fields

    from medmix.methods import get_method_class
    from medmix.training.trainer import TrainConfig

    schema = config_schema()
    cls = get_method_class(method)
    allowed = set(schema["properties"]["training"]["properties"]) | {f.name for f in fields(TrainConfig)}
    allowed |= set(cls.extra_params) | set(cls.param_schema)
    for key in params:
        if key not in allowed and key != "baseline_lr":
            raise ConfigError(f"config key `{where or f'method_params.{method}'}.{key}`: unknown key {key!r}"
                              f"{_did_you_mean(key, allowed)} (valid keys here: the `training` keys"
                              + (f" and {sorted({*cls.extra_params, *cls.param_schema})}" if
                                 cls.extra_params or cls.param_schema else "") + ")")
    _check_training_values(method, params, cfg, where or f"method_params.{method}",
                           {**schema["properties"]["training"]["properties"], **cls.param_schema})
    check = getattr(get_method_class(method), "check_params", None)  # a method's own value checks
    if check is not None:
        try:
            check({**get_method_class(method).param_defaults, **params})
        except ValueError as err:
            raise ConfigError(str(err)) from None


def _check_training_values(method: str, params: dict[str, Any], cfg: dict[str, Any], where: str,
                           properties: dict[str, Any]) -> None:
    """The ``training`` keys a run of ``method`` gets, merged as :func:`training_params` merges them
    (``training``, the class's ``param_defaults``, ``method_params`` of its family and of itself, then
    ``params`` when they are a variant's, at ``where``), validated against the ``training`` block's
    schema and the method's own (``param_schema``; minimum, type, enum...): ``method_params.medmix.max_epochs: 0`` is
    refused like ``training.max_epochs: 0``. The error names the key that set the offending value."""
    import jsonschema

    from medmix.methods import get_method_class

    cls = get_method_class(method)
    own = cfg.get("method_params") or {}
    family = getattr(cls, "family", None)
    layers = [("training", cfg.get("training") or {}), (f"param_defaults of method {method!r}", cls.param_defaults)]
    if family and family != method:
        layers.append((f"method_params.{family}", own.get(family) or {}))
    layers.append((f"method_params.{method}", own.get(method) or {}))
    if where != f"method_params.{method}":
        layers.append((where, params))
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, layer in layers:
        for key, value in layer.items():
            if key in properties:
                merged[key], source[key] = value, name
    validator = jsonschema.Draft202012Validator({"type": "object", "properties": properties})
    lines = sorted(
        f"config key `{source[str(e.absolute_path[0])]}.{_format_path(e.absolute_path)}`: {e.message}"
        for e in validator.iter_errors(merged) if e.absolute_path
    )
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines[:10]))


def _did_you_mean(word: str, options) -> str:
    hint = _closest(word, options)
    return f" (did you mean {hint!r}?)" if hint else ""


def _closest(word: str, options) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def _allowed_keys(validator, root: dict[str, Any], schema: dict[str, Any], instance: dict[str, Any]) -> set[str]:
    """Keys the (sub)schema accepts for ``instance``: its properties, those of its local ``$ref``
    (``#/...``), its ``allOf`` parts and the ``then``/``else`` branch that applies."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    keys = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        keys |= _allowed_keys(validator, root, part, instance)
    if "if" in schema:
        branch = "then" if validator.evolve(schema=schema["if"]).is_valid(instance) else "else"
        if branch in schema:
            keys |= _allowed_keys(validator, root, schema[branch], instance)
    return keys


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Schema + semantic validation; returns ``cfg`` with defaults filled in."""
    _check_method_owned_keys(cfg)
    validate_schema(cfg)
    _check_names(cfg)
    _check_unique(cfg)
    from extractors.registry import get_spec, list_experts
    from medmix.cohort import CohortError
    from medmix.datasets import known_adapters
    from medmix.datasets.declared import default_modalities, has_fixed_modalities

    adapters = known_adapters()
    for ds_name, ds in cfg["datasets"].items():
        if ds["adapter"] not in adapters:
            raise ConfigError(f"config key `datasets.{ds_name}.adapter`: unknown adapter {ds['adapter']!r}"
                              f"{_did_you_mean(ds['adapter'], adapters)}; registered adapters: {', '.join(adapters)}")
        if not ds.get("labels") and not has_fixed_modalities(ds["adapter"]) and ds["task"] != "multiclass":
            raise ConfigError(f"config key `datasets.{ds_name}.labels`: required for adapter {ds['adapter']!r}")
        if not ds.get("modalities"):  # named adapters know their own modalities
            try:
                ds["modalities"] = default_modalities(ds)
            except CohortError as err:
                raise ConfigError(f"config key `datasets.{ds_name}.modalities`: {err}") from err

    profiles = cfg["experts"]["profiles"]
    if cfg["experts"]["profile"] not in profiles:
        raise ConfigError(
            f"config key `experts.profile`: {cfg['experts']['profile']!r} is not a profile; "
            f"expected one of {sorted(profiles)}"
        )
    known = set(list_experts())
    for name in cfg["experts"].get("settings", {}):
        if name not in known:
            raise ConfigError(f"config key `experts.settings.{name}`: unknown expert{_did_you_mean(name, known)}; "
                              f"known experts: {', '.join(sorted(known))}")
    for ds_name, ds in cfg["datasets"].items():
        ratios = ds.get("split_ratios")
        if ds.get("role") != "external" and ratios and min(ratios[:2]) <= 0:
            raise ConfigError(
                f"config key `datasets.{ds_name}.split_ratios`: {ratios} leaves no training or validation patients; "
                "a development dataset needs both (for evaluation-only data set `role: external`)"
            )
        for ext in ds.get("external", []):
            if ext not in cfg["datasets"]:
                raise ConfigError(f"config key `datasets.{ds_name}.external`: {ext!r} is not a configured dataset")
            if cfg["datasets"][ext].get("role") != "external":
                raise ConfigError(f"config key `datasets.{ext}.role`: must be 'external' since {ds_name} lists it")
            if sorted(cfg["datasets"][ext].get("modalities", {})) != sorted(ds.get("modalities", {})):
                raise ConfigError(f"config key `datasets.{ext}.modalities`: must match those of {ds_name}")
            _check_external_labels(cfg, ds_name, ext)
        for mod, mcfg in ds.get("modalities", {}).items():
            key = f"datasets.{ds_name}.modalities.{mod}"
            members, teacher = committee(cfg, ds_name, mod)
            for member in members + ([Member(teacher, "teacher")] if teacher else []):
                if member.name not in known:
                    raise ConfigError(
                        f"config key `{key}` (profile {cfg['experts']['profile']!r}): unknown expert {member.name!r}; "
                        f"known experts: {', '.join(sorted(known))}"
                    )
                if mcfg["kind"] not in get_spec(member.name).kinds:
                    raise ConfigError(
                        f"config key `{key}`: expert {member.name!r} reads {list(get_spec(member.name).kinds)}, "
                        f"not {mcfg['kind']!r}"
                    )
            if len({m.name for m in members}) != len(members):
                raise ConfigError(f"config key `{key}`: an expert appears twice in the committee")
    _check_extraction_experts(cfg, known)
    _check_runs(cfg)
    return cfg


def _check_names(cfg: dict[str, Any]) -> None:
    """Dataset, modality and demo-cohort names are path components and Snakemake wildcard values
    (:data:`medmix.plan.runs.NAME_PATTERN`): ``my cohort`` or ``site/a`` is a config error here, not a
    missing input later."""
    try:
        for name in (cfg.get("demo") or {}).get("cohorts") or {}:
            check_name(name, "demo cohort", f"config key `demo.cohorts.{name}`")
        for ds_name, ds in cfg["datasets"].items():
            check_name(ds_name, "dataset", f"config key `datasets.{ds_name}`")
            for mod in ds.get("modalities") or {}:
                check_name(mod, "modality", f"config key `datasets.{ds_name}.modalities.{mod}`")
    except ValueError as err:
        raise ConfigError(str(err)) from None


#: Lists of run names whose entries must be distinct (checked after the variants' names).
UNIQUE_RUN_LISTS = (("methods",), ("sweep", "methods"), ("missing_grid", "methods"), ("missing_grid", "figure_methods"))
#: Other lists whose entries must be distinct: (path to the list, with ``*`` for every key of a mapping).
UNIQUE_LISTS = (
    ("seeds",), ("sweep", "datasets"), ("missing_grid", "settings"), ("missing_grid", "rates"),
    ("datasets", "*", "labels"), ("datasets", "*", "classes"), ("datasets", "*", "external"),
    ("datasets", "*", "modalities", "*", "columns"), ("datasets", "*", "modalities", "*", "variables"),
    ("datasets", "*", "modalities", "*", "categorical"), ("datasets", "*", "modalities", "*", "committee"),
    ("variants", "*", "modalities"), ("variants", "*", "roles"),
    ("protocols", "train", "*", "modalities"), ("protocols", "test", "*", "modalities"),
)


def _check_unique(cfg: dict[str, Any], paths=UNIQUE_LISTS) -> None:
    """A list entry given twice cannot be meant (two identical label columns, a seed or a run trained
    twice under one name): a config error naming the key and the repeated entries."""

    def walk(node: Any, path: tuple[str, ...], where: list[str]):
        if not path:
            yield ".".join(where), node
            return
        if not isinstance(node, dict):
            return
        keys = list(node) if path[0] == "*" else [path[0]] if path[0] in node else []
        for key in keys:
            yield from walk(node[key], path[1:], [*where, str(key)])

    for path in paths:
        for key, values in walk(cfg, path, []):
            if not isinstance(values, list):
                continue
            canon = [json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else
                     (str(v) if path[-1] in ("labels", "classes") else v) for v in values]
            dups = [values[i] for i, v in enumerate(canon) if v in canon[:i]]
            if dups:
                seen: list[Any] = []
                for d in dups:
                    if d not in seen:
                        seen.append(d)
                raise ConfigError(f"config key `{key}`: {', '.join(repr(d) for d in seen)} listed more than once "
                                  f"in {values}; each entry must be distinct")


def _check_external_labels(cfg: dict[str, Any], dev: str, ext: str) -> None:
    """An external cohort is scored with ``dev``'s models: same task, same labels in the same order
    (predictions are matched to label columns by position)."""
    from medmix.datasets.declared import declared_labels

    d, e = cfg["datasets"][dev], cfg["datasets"][ext]
    if d["task"] != e["task"]:
        raise ConfigError(f"config key `datasets.{ext}.task`: external dataset {ext!r} has task {e['task']!r}, but "
                          f"{dev!r}, which lists it under `external`, has task {d['task']!r}; they must be the same")
    dev_labels, ext_labels = declared_labels(d), declared_labels(e)
    if dev_labels != ext_labels:
        key = "classes" if d["task"] == "multiclass" else "labels"
        only_ext = [x for x in ext_labels if x not in dev_labels]
        only_dev = [x for x in dev_labels if x not in ext_labels]
        parts = [f"only in {name!r}: {only}" for name, only in ((ext, only_ext), (dev, only_dev)) if only]
        differ = "; ".join(parts) or "the same labels in another order; predictions are matched to labels by position"
        raise ConfigError(f"config key `datasets.{ext}.{key}`: external dataset {ext!r} has {key} {ext_labels}, but "
                          f"{dev!r}, which lists it under `external`, has {dev_labels} ({differ}); they must be "
                          "the same")


def _check_runs(cfg: dict[str, Any]) -> None:
    """``methods`` (run names), ``variants`` and ``method_params``: known methods, valid keys, selections
    that leave every development dataset at least one expert."""
    from medmix.methods import is_known_method, known_methods

    variants = cfg.get("variants") or {}
    for name, v in variants.items():
        key = f"variants.{name}"
        try:
            check_run_name(name, f"config key `{key}`")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if is_known_method(name):
            raise ConfigError(f"config key `{key}`: {name!r} is a registered method; give the variant its own name")
        if not is_known_method(v["method"]):
            raise ConfigError(f"config key `{key}.method`: unknown method {v['method']!r}"
                              f"{_did_you_mean(v['method'], known_methods())}; known: {known_methods()}")
        _check_method_params(v["method"], v.get("params") or {}, cfg, where=f"{key}.params")
        spec = run_spec(cfg, name)
        for ds in development_datasets(cfg):
            spec_committee = {mod: {"committee": [[m.name, m.role] for m in committee(cfg, ds, mod)[0]]}
                              for mod in cfg["datasets"][ds].get("modalities", {})}
            try:
                select_committee(spec_committee, spec, ds)
            except ValueError as exc:
                raise ConfigError(f"config key `{key}`: {exc}") from None
    _check_unique(cfg, UNIQUE_RUN_LISTS)
    for m in cfg.get("methods", []):
        if m not in variants and not is_known_method(m):
            raise ConfigError(f"config key `methods`: unknown method or variant {m!r}"
                              f"{_did_you_mean(m, [*known_methods(), *variants])}; known methods: {known_methods()}; "
                              f"variants: {sorted(variants) or 'none'}")
    from medmix.plan.sweep import check_sweep

    try:
        check_sweep(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for m, params in cfg.get("method_params", {}).items():
        if not is_known_method(m):
            raise ConfigError(f"config key `method_params.{m}`: unknown method{_did_you_mean(m, known_methods())}; "
                              f"known: {known_methods()}")
        _check_method_params(m, params or {}, cfg)
        if "baseline_lr" in (params or {}):
            raise ConfigError(
                f"config key `method_params.{m}.baseline_lr`: removed; every neural method takes `lr` from "
                f"`training` (use `method_params.{m}.lr` for a method-specific one)"
            )
    from medmix.plan import missing_grid  # CP-IMoE's missing grid and the datasets' modality roles

    try:
        missing_grid.check(cfg)
    except missing_grid.GridError as err:
        raise ConfigError(str(err)) from None


def committee(cfg: dict[str, Any], dataset: str, modality: str) -> tuple[list[Member], str | None]:
    """The committee and teacher of one modality: its own override, else the active profile's."""
    mcfg = cfg["datasets"][dataset]["modalities"][modality]
    prof = cfg["experts"]["profiles"][cfg["experts"]["profile"]].get(mcfg["kind"])
    if "committee" in mcfg:
        members = mcfg["committee"]
    elif prof is not None:
        members = prof["committee"]
    else:
        raise ConfigError(
            f"config key `datasets.{dataset}.modalities.{modality}`: profile {cfg['experts']['profile']!r} has no "
            f"committee for kind {mcfg['kind']!r}; add one under experts.profiles or a `committee:` here"
        )
    teacher = mcfg.get("teacher", prof.get("teacher") if prof else None)
    return [Member(m["name"], m["role"]) for m in members], teacher


def expert_identity(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """Output-affecting settings of an expert (``extractors.base.EMBEDDING_SETTINGS``: model id, revision,
    preprocessing; the spec's, with the config's overrides)."""
    from extractors.registry import get_spec

    spec = get_spec(name)
    over = cfg["experts"].get("settings", {}).get(name, {})
    return {
        "extractor": name,
        "model_id": over.get("model_id", spec.hub_id),
        "revision": over.get("revision", spec.revision),
        "preprocessing": {**spec.preprocessing, **over.get("preprocessing", {})},
    }


def with_expected_dims(
    identities: dict[str, dict[str, Any]],
    feature_keys: list[str] | None = None,
    schemas: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``identities`` (expert name -> :func:`expert_identity`) plus the embedding width each
    configured expert writes (``dim``), so that a cached feature file of another width is refused.

    Widths that follow the dataset (a series' variable count, a table's columns and categories)
    come from the modality's input schema (``schemas``: modality -> schema, the cohort's
    ``input_schema``): for each ``"<modality>/<expert>"`` of ``feature_keys`` whose modality has
    one, an entry under that key. (Computed by the job, not planned as a rule param: adding it
    reruns nothing.)
    """
    from extractors.base import EMBEDDING_SETTINGS
    from extractors.registry import create_extractor

    def dim(name: str, schema: dict[str, Any] | None) -> int:
        settings = {k: identities[name].get(k) for k in EMBEDDING_SETTINGS}
        return int(create_extractor(name, {**settings, "input_schema": dict(schema or {})}).dim)

    out = {name: {**ident, "dim": dim(name, None)} for name, ident in identities.items()}
    for key in feature_keys or []:
        mod, name = key.split("/", 1)
        if name in identities and (schemas or {}).get(mod):
            out[key] = {**identities[name], "dim": dim(name, schemas[mod])}
    return out



def training_job_inputs(sm: Any) -> dict[str, Any]:
    """The keyword arguments a ``fit`` or ``stages`` job reads from its Snakemake object the same
    way: the cohort, its features and their identities, the training params, the seeds and the
    train-time protocol (the two rules' shared inputs, params and ``protocol`` wildcard)."""
    from medmix.cohort import read_cohort_schemas
    from medmix.protocols import Protocol

    keys = json.loads(sm.params.feature_keys)
    return {
        "cohort_path": sm.input.cohort,
        "committee": json.loads(sm.params.committee),
        "features": dict(zip(keys, sm.input.features, strict=True)),
        "identities": with_expected_dims(json.loads(sm.params.identities), keys, read_cohort_schemas(sm.input.cohort)),
        "params": json.loads(sm.params.training),
        "seeds": json.loads(sm.params.seeds),
        "train_protocol": Protocol.from_spec(sm.wildcards.protocol, json.loads(sm.params.train_protocol)),
    }

def expert_runtime(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """Settings that do not change the embeddings (where and how fast to run)."""
    from extractors.base import RUNTIME_SETTINGS

    over = cfg["experts"].get("settings", {}).get(name, {})
    return {k: over[k] for k in RUNTIME_SETTINGS if k in over}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def feature_path(dataset: str, modality: str, expert: str) -> str:
    return f"results/{dataset}/features/{modality}/{expert}.parquet"


def extraction_jobs(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every (dataset, modality, expert) feature file the configuration needs, teachers included."""
    jobs = []
    for ds_name, ds in cfg["datasets"].items():
        for mod in ds.get("modalities", {}):
            members, teacher = committee(cfg, ds_name, mod)
            for name in [m.name for m in members] + ([teacher] if teacher else []):
                if (ds_name, mod, name) not in jobs:  # a teacher may also sit on the committee
                    jobs.append((ds_name, mod, name))
    return jobs


def reference_dataset(cfg: dict[str, Any], dataset: str) -> str | None:
    """The development dataset that lists ``dataset`` as external (the first one), or ``None``.

    An external cohort takes its input schemas (series variables, table categories) from it.
    """
    return next((n for n, d in cfg["datasets"].items() if dataset in d.get("external", [])), None)


def development_datasets(cfg: dict[str, Any]) -> list[str]:
    return [n for n, d in cfg["datasets"].items() if d.get("role", "development") == "development"]


def training_params(cfg: dict[str, Any], run: str) -> dict[str, Any]:
    """Settings of run ``run``: the ``training`` section, then the method class's own
    ``param_defaults`` (e.g. ``medmix_stacked``'s read-out), then ``method_params`` of the method's
    family (e.g. ``large_ref`` for ``large_ref_note``), then of the method itself, then a variant's
    ``params``."""
    from medmix.methods import get_method_class

    spec = run_spec(cfg, run)
    cls = get_method_class(spec.method)
    family = getattr(cls, "family", None)
    own = cfg.get("method_params", {})
    return {**cfg.get("training", {}), **cls.param_defaults, **(own.get(family, {}) if family else {}),
            **own.get(spec.method, {}), **spec.params}


# ----------------------------------------------------------------------------- scale-out
#: Resource keys a rule or an expert's extraction jobs may override (config `resources`, `extraction.experts`).
RESOURCE_KEYS = ("threads", "mem_mb", "runtime", "gpu", "disk_mb")


def _check_extraction_experts(cfg: dict[str, Any], known: set[str]) -> None:
    """``extraction.experts.<name>`` names a registered expert; experts run outside the main
    environment (MOIRAI's worker) are not sharded."""
    from extractors.registry import get_spec

    for name, over in cfg.get("extraction", {}).get("experts", {}).items():
        if name not in known:
            raise ConfigError(f"config key `extraction.experts.{name}`: unknown expert{_did_you_mean(name, known)}; "
                              f"known experts: {', '.join(sorted(known))}")
        if over.get("shards", 1) > 1 and get_spec(name).environment != "main":
            raise ConfigError(f"config key `extraction.experts.{name}.shards`: expert {name!r} runs in its own "
                              f"environment ({get_spec(name).environment!r}) and is not sharded; remove the key")


def expert_shards(cfg: dict[str, Any], name: str) -> int:
    """Extraction shards of expert ``name``: ``extraction.experts.<name>.shards``, else
    ``extraction.shards`` (experts outside the main environment: always 1)."""
    from extractors.registry import get_spec

    ext = cfg.get("extraction", {})
    if get_spec(name).environment != "main":
        return 1
    return int(ext.get("experts", {}).get(name, {}).get("shards", ext.get("shards", 1)))


#: The ``resources.<name>`` of every extraction job (``extract`` and ``extract_shard``), under the
#: expert's own ``extraction.experts.<expert>``.
EXTRACTION_RESOURCES = "extract"


def extraction_resources(cfg: dict[str, Any], name: str, rule: str = EXTRACTION_RESOURCES) -> dict[str, int]:
    """Resources of one extraction job of expert ``name``: the registry's declaration (``mem_mb``,
    ``runtime_min`` split over the shards, ``gpu`` for GPU-capable experts unless the expert is set
    to run on CPU), then ``resources.<rule>``, then ``extraction.experts.<name>``."""
    from extractors.registry import get_spec

    spec = get_spec(name)
    device = cfg["experts"].get("settings", {}).get(name, {}).get("device", "auto")
    shards = expert_shards(cfg, name)
    out = {
        "threads": 1,
        "mem_mb": int(spec.mem_mb),
        "runtime": max(10, -(-int(spec.runtime_min) // shards)),
        "gpu": 1 if spec.gpu and not str(device).startswith("cpu") else 0,
    }
    out.update(cfg.get("resources", {}).get(rule, {}))
    over = cfg.get("extraction", {}).get("experts", {}).get(name, {})
    out.update({k: v for k, v in over.items() if k in RESOURCE_KEYS})
    return out
