"""Run variants: a registered method with its own settings and/or a subset of the cached experts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from config_helpers import default_config
from workflow_helpers import manifest_config, snakemake, write_manifest_cohort

from medmix.plan.config import (
    ConfigError,
    run_spec,
    run_specs,
    select_committee,
    training_params,
    validate_config,
)

COMMITTEE = {
    "note": {"committee": [["text_keywords", "biomed"], ["minilm_l6", "general"], ["rag_minilm", "rag"]],
             "teacher": "minilm_l6"},
    "frontal": {"committee": [["image_texture", "biomed"], ["image_intensity_grid", "general"]], "teacher": None},
}


def _config(**variants) -> dict:
    cfg = default_config()
    cfg["variants"] = variants
    cfg["methods"] = ["medmix", *variants]
    return cfg


def test_a_plain_method_is_its_own_run():
    spec = run_spec(_config(), "medmix")
    assert ((spec.name, spec.method, spec.modalities, spec.roles, spec.is_variant)
            == ("medmix", "medmix", None, None, False))
    assert select_committee(COMMITTEE, spec, "d") == COMMITTEE


def test_variant_selects_modalities_and_roles_and_keeps_the_teacher():
    cfg = _config(medmix_no_rag={"method": "medmix", "roles": ["biomed", "general"]},
                  medmix_note_only={"method": "medmix", "modalities": ["note"]})
    no_rag = select_committee(COMMITTEE, run_spec(cfg, "medmix_no_rag"), "d")
    assert no_rag["note"]["committee"] == [["text_keywords", "biomed"], ["minilm_l6", "general"]]
    assert no_rag["note"]["teacher"] == "minilm_l6" and no_rag["frontal"] == COMMITTEE["frontal"]
    assert list(select_committee(COMMITTEE, run_spec(cfg, "medmix_note_only"), "d")) == ["note"]
    assert list(run_specs(cfg)) == ["medmix", "medmix_no_rag", "medmix_note_only"]


def test_a_modality_left_without_experts_is_dropped_and_an_empty_run_is_an_error():
    cfg = _config(rag_only={"method": "meanavg", "roles": ["rag"]}, ct_only={"method": "meanavg", "modalities": ["ct"]})
    assert list(select_committee(COMMITTEE, run_spec(cfg, "rag_only"), "d")) == ["note"]
    with pytest.raises(ValueError, match="run 'ct_only' on dataset 'd': no expert left"):
        select_committee(COMMITTEE, run_spec(cfg, "ct_only"), "d")


def test_variant_params_override_training_and_method_params():
    cfg = _config(medmix_fast={"method": "medmix", "params": {"lr": 0.01}})
    cfg["method_params"] = {"medmix": {"lr": 0.002, "patience": 3}}
    params = training_params(cfg, "medmix_fast")
    assert params["lr"] == 0.01 and params["patience"] == 3
    assert training_params(cfg, "medmix")["lr"] == 0.002


@pytest.mark.parametrize(("variants", "message"), [
    ({"medmix": {"method": "medmix"}}, "is a registered method"),
    ({"v": {"method": "medmixx"}}, "variants.v.method`: unknown method 'medmixx'.*did you mean 'medmix'"),
    ({"v": {"method": "medmix", "params": {"lrr": 1}}}, "variants.v.params.lrr`: unknown key 'lrr'"),
    ({"v": {"method": "medmix", "modalities": ["pathology"]}},
     "variants.v`: run 'v' on dataset 'demo_openi': no expert left"),
    ({"bad/name": {"method": "medmix"}}, "must match"),
])
def test_bad_variants_are_config_errors_naming_the_key(variants, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_config(**variants))


def test_schema_refuses_unknown_variant_keys_and_roles():
    with pytest.raises(ConfigError, match="variants.v.modality.*did you mean 'modalities'"):
        validate_config(_config(v={"method": "medmix", "modality": ["note"]}))
    with pytest.raises(ConfigError, match="variants.v.roles.0"):
        validate_config(_config(v={"method": "medmix", "roles": ["teacher"]}))


def test_an_unknown_run_in_methods_names_the_variants():
    cfg = _config(medmix_note_only={"method": "medmix", "modalities": ["note"]})
    cfg["methods"] = ["medmix_note_onyl"]
    with pytest.raises(ConfigError, match="did you mean 'medmix_note_only'"):
        validate_config(cfg)


@pytest.mark.slow
def test_variants_train_from_the_same_cache_and_are_rows_of_the_tables(tmp_path):
    """A modality subset and a role subset: only their feature files reach the fit job, no re-extraction,
    and the predictions / tables carry the run name."""
    write_manifest_cohort(tmp_path / "cohort", n=30)
    cfg = manifest_config(tmp_path)
    cfg["experts"]["profiles"]["demo"]["text"] = {"committee": [{"name": "text_keywords", "role": "biomed"},
                                                                {"name": "text_ngrams_wide", "role": "general"}]}
    cfg["variants"] = {"meanavg_note": {"method": "meanavg", "modalities": ["note"]},
                       "meanavg_biomed": {"method": "meanavg", "roles": ["biomed"]}}
    cfg["methods"] = ["meanavg", "meanavg_note", "meanavg_biomed"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--cores", "2", "all")
    runs = Path(tmp_path / "results/mycohort/runs")
    fitted = {name: json.loads((runs / name / "none/fit.json").read_text()) for name in cfg["methods"]}
    assert {n: f["method"] for n, f in fitted.items()} == dict.fromkeys(cfg["methods"], "meanavg")
    assert sorted(fitted["meanavg"]["committee"]) == ["note", "xray"]
    assert list(fitted["meanavg_note"]["committee"]) == ["note"]
    biomed = fitted["meanavg_biomed"]["committee"]
    assert {m[1] for e in biomed.values() for m in e["committee"]} == {"biomed"}
    assert [m[0] for m in biomed["note"]["committee"]] == ["text_keywords"]
    extracted = sorted(p.name for p in (tmp_path / "results/mycohort/features").rglob("*.parquet"))
    assert len(extracted) == 4  # xray: 2 image experts; note: 2 text experts; once, for every run
    preds = pd.read_parquet(runs / "meanavg_note/none/predictions/mycohort.parquet")
    assert set(preds.method) == {"meanavg_note"}
    metrics = pd.read_csv(tmp_path / "results/tables/metrics.csv")
    assert set(metrics.method) == set(cfg["methods"])


def test_sweep_runs_are_their_base_run_restricted_to_the_subset():
    import re

    from medmix.plan.runs import RUN_NAME_PATTERN

    cfg = _config(medmix_no_rag={"method": "medmix", "roles": ["biomed", "general"], "params": {"lr": 0.01}})
    spec = run_spec(cfg, "medmix_no_rag@note")
    assert (spec.method, spec.modalities, spec.roles, spec.params) == ("medmix", ("note",), ("biomed", "general"),
                                                                      {"lr": 0.01})
    assert select_committee(COMMITTEE, spec, "d") == {"note": {"committee": [["text_keywords", "biomed"],
                                                                             ["minilm_l6", "general"]],
                                                               "teacher": "minilm_l6"}}
    assert training_params(cfg, "medmix_no_rag@note")["lr"] == 0.01
    assert run_spec(cfg, "gbdt@frontal+note").modalities == ("frontal", "note")
    assert re.fullmatch(RUN_NAME_PATTERN, "gbdt@frontal+note") and not re.fullmatch(RUN_NAME_PATTERN, "a@b@c")
    with pytest.raises(KeyError, match="unknown run 'medmixx'"):
        run_spec(cfg, "medmixx@note")


@pytest.mark.parametrize(("sweep", "message"), [
    ({"methods": ["medmix_note_only"]}, "restricts its modalities"),
    ({"methods": ["medmixx"]}, "unknown method or variant 'medmixx'"),
    ({"methods": ["medmix"], "n_seeds": 0}, "sweep"),
])
def test_bad_sweeps_are_config_errors(sweep, message):
    cfg = _config(medmix_note_only={"method": "medmix", "modalities": ["note"]})
    cfg["sweep"] = sweep
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_sweep_subset_runs_train_the_sweep_seeds():
    from medmix.plan.runs import run_seeds

    cfg = _config()
    cfg["seeds"] = [0, 1, 2]
    cfg["sweep"] = {"methods": ["medmix"], "n_seeds": 1}
    cfg = validate_config(cfg)
    assert run_seeds(cfg, "demo_openi", "medmix@note", "none") == [0]
    assert run_seeds(cfg, "demo_openi", "medmix", "none") == [0, 1, 2]  # the full set: the method's own run
    del cfg["sweep"]["n_seeds"]
    assert run_seeds(cfg, "demo_openi", "medmix@note", "none") == [0, 1, 2]


def test_a_variant_name_may_not_contain_the_sweep_separator():
    with pytest.raises(ConfigError, match="must match"):
        validate_config(_config(**{"medmix@note": {"method": "medmix"}}))


def test_a_sweep_without_methods_is_off_and_its_other_keys_unused():
    """A user's config over the default keeps the default's `sweep.datasets` when it empties the
    methods (Snakemake merges config files key by key): that must not be an error."""
    cfg = _config()
    cfg["sweep"] = {"methods": [], "datasets": ["no_such_dataset"]}
    validate_config(cfg)
