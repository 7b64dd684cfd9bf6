from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from medmix.plan.config import (
    ConfigError,
    committee,
    expert_identity,
    extraction_jobs,
    training_params,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_config_is_valid_and_gets_defaults(cfg):
    out = validate_config(cfg)
    assert out["training"]["batch_size"] == 256  # paper default filled in
    assert "router_lr_mult" not in out["training"]  # MedMIX's own: its defaults, not the global block's
    assert training_params(out, "medmix")["router_lr_mult"] == 0.3
    assert training_params(out, "medmix_stacked")["probe_crossfit"] == 5
    assert out["datasets"]["demo_openi"]["role"] == "development"


def test_a_methods_own_setting_in_the_training_block_says_where_it_goes(cfg):
    cfg["training"]["distill_max"] = 0.1
    with pytest.raises(ConfigError, match=r"`training.distill_max`: .*medmix.*set it under `method_params.medmix`"):
        validate_config(cfg)
    del cfg["training"]["distill_max"]
    cfg["method_params"]["medmix"] = {"distill_max": 0.1}
    assert training_params(validate_config(cfg), "medmix")["distill_max"] == 0.1
    cfg["method_params"]["medmix"] = {"distill_ramp_epochs": -1}  # the method's schema checks the value
    with pytest.raises(ConfigError, match="method_params.medmix.distill_ramp_epochs"):
        validate_config(cfg)
    cfg["method_params"] = {"meanavg": {"distill_max": 0.1}}  # not a mean-fusion setting
    with pytest.raises(ConfigError, match="unknown key 'distill_max'"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c["datasets"]["demo_openi"].__setitem__("task", "regression"), "datasets.demo_openi.task"),
        (lambda c: c.__setitem__("seeds", "zero"), "`seeds`"),
        (lambda c: c["training"].__setitem__("lr", -1), "training.lr"),
        (lambda c: c["datasets"]["demo_openi"]["modalities"]["note"].__setitem__("kind", "audio"),
         "modalities.note.kind"),
        (lambda c: c.__setitem__("unexpected_section", 1), "unexpected_section"),
        (lambda c: c["experts"].__setitem__("profile", "nope"), "experts.profile"),
    ],
)
def test_schema_errors_name_the_key(cfg, mutate, needle):
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert needle in str(err.value)


def test_unknown_expert_lists_known_ones(cfg):
    cfg["experts"]["profiles"]["demo"]["text"]["committee"][0]["name"] = "no_such_model"
    with pytest.raises(ConfigError, match="unknown expert 'no_such_model'; known experts: .*minilm_l6"):
        validate_config(cfg)


def test_expert_must_read_the_modality_kind(cfg):
    cfg["datasets"]["demo_openi"]["modalities"]["note"]["committee"] = [{"name": "image_texture", "role": "biomed"}]
    with pytest.raises(ConfigError, match="reads"):
        validate_config(cfg)


def test_external_dataset_must_be_declared(cfg):
    cfg["datasets"]["demo_mimic"]["external"] = ["missing_ds"]
    with pytest.raises(ConfigError, match="datasets.demo_mimic.external"):
        validate_config(cfg)


def test_identity_and_committee_resolution(cfg):
    cfg = validate_config(copy.deepcopy(cfg))
    cfg["experts"]["settings"] = {"image_texture": {"preprocessing": {"levels": 8}, "batch_size": 4}}
    ident = expert_identity(cfg, "image_texture")
    assert ident["preprocessing"]["levels"] == 8 and "batch_size" not in ident
    members, _ = committee(cfg, "demo_openi", "note")
    assert [m.role for m in members] == ["biomed", "general", "rag", "biomed", "general"]
    jobs = extraction_jobs(cfg)
    assert ("demo_mimic", "ct", "ct_texture25d") in jobs and len(set(jobs)) == len(jobs)


def test_paper_profile_is_one_setting_away(cfg):
    cfg["experts"]["profile"] = "paper"
    cfg = validate_config(cfg)
    members, teacher = committee(cfg, "demo_mimic", "ehr")
    assert [m.name for m in members] == ["moirai", "chronos_small", "rag_medcpt_qwen2"]
    assert teacher == "chronos_large"
    roles = {m.role for d, ds in cfg["datasets"].items() for mod in ds["modalities"] for m in committee(cfg, d, mod)[0]}
    assert roles == {"biomed", "general", "rag"}


# --------------------------------------------------------------------------- unknown keys (typos)
IU = {"adapter": "iu_xray", "task": "multilabel", "reports_csv": "r.csv", "projections_csv": "p.csv"}
MIMIC = {"adapter": "mimic_iv_mm", "task": "multitask", "root": "data/mimic"}


@pytest.mark.parametrize(
    ("mutate", "where", "hint"),
    [
        (lambda c: c["datasets"]["demo_openi"].__setitem__("split_colum", "split"), "datasets.demo_openi.split_colum",
         "split_column"),
        (lambda c: c["datasets"]["demo_openi"]["modalities"]["note"].__setitem__("colum", "note"),
         "datasets.demo_openi.modalities.note.colum", "column"),
        (lambda c: c["datasets"].__setitem__("iu", {**IU, "note_section": "separate"}), "datasets.iu.note_section",
         "note_sections"),
        (lambda c: c["datasets"].__setitem__("iu", {**IU, "modalities": {"frontal": {"kind": "image", "colum": "x"}}}),
         "datasets.iu.modalities.frontal.colum", "column"),
        (lambda c: c["datasets"].__setitem__("m", {**MIMIC, "ehr_variable": ["hr"]}), "datasets.m.ehr_variable",
         "ehr_variables"),
        (lambda c: c["training"].__setitem__("warmup_epoch", 3), "training.warmup_epoch", "warmup_epochs"),
        (lambda c: c["experts"]["settings"].__setitem__("minilm_l6", {"batchsize": 4}),
         "experts.settings.minilm_l6.batchsize", "batch_size"),
        (lambda c: c["experts"]["profiles"]["demo"].__setitem__("imag", {"committee": []}),
         "experts.profiles.demo.imag", "image"),
        (lambda c: c["experts"]["profiles"]["demo"]["text"].__setitem__("teachr", None),
         "experts.profiles.demo.text.teachr", "teacher"),
        (lambda c: c["protocols"]["test"]["random_drop_30"].__setitem__("modalty", "note"),
         "protocols.test.random_drop_30.modalty", "modality"),
        (lambda c: c["demo"]["cohorts"]["demo_openi"].__setitem__("n_patient", 30), "demo.cohorts.demo_openi.n_patient",
         "n_patients"),
        (lambda c: c.__setitem__("extraction", {"max_failed_fraktion": 0.2}), "extraction.max_failed_fraktion",
         "max_failed_fraction"),
        (lambda c: c["rag"].__setitem__("knowledgebase", "demo"), "rag.knowledgebase", "knowledge_base"),
        (lambda c: c.__setitem__("method", ["medmix"]), "method", "methods"),
    ],
)
def test_unknown_key_names_where_it_is_and_the_closest_valid_key(cfg, mutate, where, hint):
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert f"`{where}`: unknown key" in str(err.value)
    assert f"did you mean {hint!r}?" in str(err.value)


def test_adapter_specific_keys_belong_to_their_adapter(cfg):
    cfg["datasets"]["demo_openi"]["reports_csv"] = "r.csv"  # an iu_xray key on a demo (manifest) dataset
    with pytest.raises(ConfigError, match="`datasets.demo_openi.reports_csv`: unknown key"):
        validate_config(cfg)


def test_modality_keys_follow_the_kind(cfg):
    mods = cfg["datasets"]["demo_mimic"]["modalities"]
    mods["ehr"].update({"variables": ["hr", "gcs"]})
    cfg["datasets"]["demo_openi"]["modalities"]["static"] = {
        "kind": "tabular", "columns": ["age", "sex"], "categorical": ["sex"], "infer_categorical": True,
        "committee": [{"name": "tabular_raw", "role": "general"}]}
    validate_config(copy.deepcopy(cfg))
    bad = copy.deepcopy(cfg)
    bad["datasets"]["demo_mimic"]["modalities"]["ehr"]["categorical"] = ["gcs"]  # a tabular-only key
    with pytest.raises(ConfigError, match="`datasets.demo_mimic.modalities.ehr.categorical`: unknown key"):
        validate_config(bad)
    del cfg["datasets"]["demo_openi"]["modalities"]["static"]
    mods["frontal"]["columns"] = ["a"]  # only tabular modalities list columns
    with pytest.raises(ConfigError, match="`datasets.demo_mimic.modalities.frontal.columns`: unknown key"):
        validate_config(cfg)


def test_unknown_method_in_method_params_suggests_the_closest(cfg):
    cfg["method_params"] = {"medmx": {"dropout": 0.2}}
    with pytest.raises(ConfigError, match=r"`method_params.medmx`: unknown method \(did you mean 'medmix'\?\)"):
        validate_config(cfg)


def test_every_key_an_adapter_reads_is_declared_for_it():
    """The schema's per-adapter keys (definitions.adapter_*) cover what each adapter module reads from its config."""
    import ast

    import jsonschema

    from medmix.datasets import known_adapters

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    from medmix.plan.config import _allowed_keys

    for adapter, spec in known_adapters().items():
        source = REPO / (spec.module.replace(".", "/") + ".py")
        read = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "cfg" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                read.add(node.args[0].value)
            elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "cfg"
                  and isinstance(node.slice, ast.Constant)):
                read.add(node.slice.value)
        allowed = _allowed_keys(validator, schema, {"$ref": "#/definitions/dataset"}, {"adapter": adapter})
        assert read and read <= allowed, f"{adapter} ({source.name}) reads undeclared keys {sorted(read - allowed)}"


def test_snakemake_refuses_a_config_typo(tmp_path):
    from workflow_helpers import snakemake, tiny_config

    cfg = tiny_config()
    cfg["datasets"]["demo_openi"]["split_colum"] = "split"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", check=False)
    assert proc.returncode != 0
    assert "`datasets.demo_openi.split_colum`: unknown key 'split_colum'; did you mean 'split_column'?" in (
        proc.stdout + proc.stderr)


def test_method_params_keys_are_training_keys_or_the_methods_own(cfg):
    cfg["method_params"] = {"linear_probe": {"lp_c_grid": [0.1, 1.0]}, "medmix": {"linear_readout": False, "lr": 3e-4}}
    validate_config(copy.deepcopy(cfg))
    cfg["method_params"] = {"medmix": {"hiden_dim": 64}}
    with pytest.raises(ConfigError,
                       match=r"`method_params.medmix.hiden_dim`: unknown key 'hiden_dim' \(did you "
                             r"mean 'hidden_dim'\?\)"):
        validate_config(copy.deepcopy(cfg))
    cfg["method_params"] = {"meanavg": {"lp_c_grid": [1.0]}}  # the probe's own key, not meanavg's
    with pytest.raises(ConfigError, match=r"`method_params.meanavg.lp_c_grid`: unknown key"):
        validate_config(cfg)


# --------------------------------------------------------------------------- nothing silently wrong (issue 29)
def _add_variant(c, name, spec):
    c["variants"][name] = spec
    if name not in c["methods"]:
        c["methods"] = [*c["methods"], name]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.__setitem__("seeds", [0, 1, 0]),
         "config key `seeds`: 0 listed more than once in [0, 1, 0]; each entry must be distinct"),
        (lambda c: c.__setitem__("methods", ["medmix", "gbdt", "medmix"]),
         "config key `methods`: 'medmix' listed more than once in ['medmix', 'gbdt', 'medmix']"),
        (lambda c: c["datasets"]["demo_openi"].__setitem__("labels", ["effusion", "opacity", "effusion"]),
         "config key `datasets.demo_openi.labels`: 'effusion' listed more than once"),
        (lambda c: c.__setitem__("missing_grid", {"methods": ["cpimoe", "cpimoe"]}),
         "config key `missing_grid.methods`: 'cpimoe' listed more than once"),
        (lambda c: c.__setitem__("sweep", {"methods": ["gbdt", "gbdt"]}),
         "config key `sweep.methods`: 'gbdt' listed more than once"),
        (lambda c: c["datasets"]["demo_mimic"]["modalities"]["ehr"].__setitem__("variables", ["hr", "hr"]),
         "config key `datasets.demo_mimic.modalities.ehr.variables`: 'hr' listed more than once"),
        (lambda c: _add_variant(c, "medmix", {"method": "medmix"}),
         "config key `variants.medmix`: 'medmix' is a registered method; give the variant its own name"),
        (lambda c: c["datasets"].__setitem__("my cohort", c["datasets"].pop("demo_openi")),
         "config key `datasets.my cohort`: dataset name 'my cohort' may hold only letters, digits and '_'"),
        (lambda c: c["datasets"].__setitem__("site/a", c["datasets"].pop("demo_openi")),
         "config key `datasets.site/a`: dataset name 'site/a' may hold only letters, digits and '_'"),
        (lambda c: c["datasets"].__setitem__("site-a", c["datasets"].pop("demo_openi")),
         "config key `datasets.site-a`: dataset name 'site-a' may hold only letters, digits and '_'"),
        (lambda c: c["datasets"].__setitem__("tables", c["datasets"].pop("demo_openi")),
         "config key `datasets.tables`: dataset name 'tables' is reserved"),
        (lambda c: c["datasets"]["demo_openi"]["modalities"].__setitem__("x ray", {"kind": "image", "column": "x"}),
         "config key `datasets.demo_openi.modalities.x ray`: modality name 'x ray' may hold only letters"),
        (lambda c: c["datasets"]["demo_mimic_ext"].__setitem__("labels", ["mortality", "long_stay"]),
         "config key `datasets.demo_mimic_ext.labels`: external dataset 'demo_mimic_ext' has labels "
         "['mortality', 'long_stay'], but 'demo_mimic', which lists it under `external`, has "
         "['mortality', 'long_stay', 'readmission'] (only in 'demo_mimic': ['readmission']); they must be the same"),
        (lambda c: c["datasets"]["demo_mimic_ext"].__setitem__("labels", ["long_stay", "mortality", "readmission"]),
         "(the same labels in another order; predictions are matched to labels by position)"),
        (lambda c: c["datasets"]["demo_mimic_ext"].__setitem__("task", "multilabel"),
         "config key `datasets.demo_mimic_ext.task`: external dataset 'demo_mimic_ext' has task 'multilabel', but "
         "'demo_mimic', which lists it under `external`, has task 'multitask'; they must be the same"),
        (lambda c: c.__setitem__("method_params", {"medmix": {"max_epochs": 0}}),
         "config key `method_params.medmix.max_epochs`: 0 is less than the minimum of 1"),
        (lambda c: c.__setitem__("method_params", {"gbdt": {"early_stopping": "val_acc"}}),
         "config key `method_params.gbdt.early_stopping`: 'val_acc' is not one of"),
        (lambda c: _add_variant(c, "medmix_v", {"method": "medmix", "params": {"dropout": 1.5}}),
         "config key `variants.medmix_v.params.dropout`: 1.5 is greater than the maximum of 1"),
    ],
)
def test_what_cannot_be_meant_is_a_config_error(cfg, mutate, message):
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value)


def test_merged_method_settings_are_valid_where_the_training_block_is(cfg):
    """``method_params`` and a variant's ``params`` are checked after merging, and the error names the
    layer that set the value; a valid override is accepted."""
    cfg["method_params"] = {"medmix": {"max_epochs": 1, "patience": 3}}
    cfg["variants"]["medmix_v"] = {"method": "medmix", "params": {"lr_grid": [0.1, 0.01]}}
    validate_config(copy.deepcopy(cfg))
    cfg["variants"]["medmix_v"]["params"]["lr_grid"] = [0.1, 0.1]
    with pytest.raises(ConfigError, match=r"`variants.medmix_v.params.lr_grid`: \[0.1, 0.1\] has non-unique elements"):
        validate_config(copy.deepcopy(cfg))


def test_snakemake_refuses_an_unsafe_dataset_name_before_any_job(tmp_path):
    from workflow_helpers import snakemake, tiny_config

    cfg = tiny_config()
    cfg["datasets"]["my cohort"] = cfg["datasets"]["demo_openi"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", check=False)
    assert proc.returncode != 0
    assert "config key `datasets.my cohort`: dataset name 'my cohort' may hold only letters, digits and '_'" in (
        proc.stdout + proc.stderr)
    assert "MissingInputException" not in proc.stdout + proc.stderr


def test_the_schema_declares_exactly_the_expert_settings():
    """Which expert settings change the embeddings is declared once (extractors.base); the schema's
    ``experts.settings.<name>`` keys are those and the runtime ones, nothing else."""
    from extractors.base import EMBEDDING_SETTINGS, RUNTIME_SETTINGS, ExtractorSettings
    from medmix.plan.schema import SCHEMA_PATH

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    keys = schema["properties"]["experts"]["properties"]["settings"]["additionalProperties"]["properties"]
    assert set(keys) == {*EMBEDDING_SETTINGS, *RUNTIME_SETTINGS}
    assert set(EMBEDDING_SETTINGS).isdisjoint(RUNTIME_SETTINGS)
    assert {*EMBEDDING_SETTINGS, *RUNTIME_SETTINGS, "input_schema"} == set(ExtractorSettings.__dataclass_fields__)


def test_resources_name_rules_and_their_threads_reach_the_jobs(tmp_path):
    """`resources.<rule>`: a name no rule takes resources under is refused (it would be ignored), and a
    `threads` override is the job's threads."""
    from workflow_helpers import snakemake, tiny_config

    cfg = tiny_config()
    cfg["resources"] = {"stage": {"mem_mb": 3000}}  # the rule is `stages`
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", check=False)
    assert proc.returncode != 0
    assert "config key `resources.stage`: unknown rule 'stage'; did you mean 'stages'?" in proc.stdout + proc.stderr
    cfg["resources"] = {"fit": {"threads": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = snakemake(tmp_path, "-n", "--cores", "2", "all").stdout
    fits = re.findall(r"^(?:local)?rule fit:\n(.*?)(?=^\[|\Z)", plan, re.M | re.S)  # 8.4.9 says "localrule"
    assert fits and all("\n    threads: 2\n" in block for block in fits)
