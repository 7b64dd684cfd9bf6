from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medmix.config import ConfigError, committee, expert_identity, extraction_jobs, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_config_is_valid_and_gets_defaults(cfg):
    out = validate_config(cfg)
    assert out["training"]["batch_size"] == 256  # paper default filled in
    assert out["training"]["router_lr_mult"] == 0.3
    assert out["datasets"]["demo_openi"]["role"] == "development"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c["datasets"]["demo_openi"].__setitem__("task", "regression"), "datasets.demo_openi.task"),
        (lambda c: c.__setitem__("seeds", "zero"), "`seeds`"),
        (lambda c: c["training"].__setitem__("lr", -1), "training.lr"),
        (lambda c: c["datasets"]["demo_openi"]["modalities"]["note"].__setitem__("kind", "audio"), "modalities.note.kind"),
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
