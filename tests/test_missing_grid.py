"""The CP-IMoE missing grid in config (issue 14): expansion into protocols and runs, the matching
test protocol of a train-and-test run, test-only mode, and config errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medmix.plan import missing_grid
from medmix.plan.config import ConfigError, validate_config
from medmix.protocols import parse_protocols

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    out = yaml.safe_load((REPO / "config.yaml").read_text())
    out["missing_grid"] = {"methods": ["cpimoe", "medmix", "momke"], "rates": [0.2, 0.8]}
    return validate_config(out)


def test_grid_expands_to_protocols_and_runs(cfg):
    protos = missing_grid.dataset_protocols(cfg, "demo_openi")
    assert list(protos) == ["miss_primary_20", "miss_primary_80", "miss_secondary_20", "miss_secondary_80",
                            "miss_random_20", "miss_random_80"]
    assert protos["miss_primary_80"] == {"kind": "missing_one", "modalities": ["frontal"], "p": 0.8}
    assert protos["miss_random_20"]["modalities"] == ["frontal", "note"]
    assert missing_grid.dataset_protocols(cfg, "demo_mimic") == {}  # declares no roles
    runs = missing_grid.grid_runs(cfg)
    methods = {m for _, m, _ in runs}
    assert methods <= {"cpimoe", "medmix", "momke"} and {"cpimoe", "medmix"} <= methods
    assert len([r for r in runs if r[1] == "cpimoe"]) == 6
    # every grid protocol parses into a registered kind
    assert [p.kind for p in parse_protocols(protos)][1:] == ["missing_one"] * 6


def test_train_and_test_run_is_evaluated_under_its_own_protocol(cfg):
    spec = missing_grid.train_protocol_spec(cfg, "demo_openi", "miss_secondary_80")
    assert spec == {"kind": "missing_one", "modalities": ["note"], "p": 0.8}
    tests = missing_grid.test_protocol_specs(cfg, "demo_openi", "cpimoe", "miss_secondary_80")
    assert list(tests) == [*cfg["protocols"]["test"], "miss_secondary_80"] and tests["miss_secondary_80"] == spec
    # methods outside the grid and clean runs keep the configured test protocols only
    assert missing_grid.test_protocol_specs(cfg, "demo_openi", "meanavg", "none") == cfg["protocols"]["test"]
    assert missing_grid.test_protocol_specs(cfg, "demo_openi", "cpimoe", "none") == cfg["protocols"]["test"]
    with pytest.raises(missing_grid.GridError, match="neither in `protocols.train`"):
        missing_grid.train_protocol_spec(cfg, "demo_openi", "miss_primary_55")


def test_test_only_mode_evaluates_the_clean_run_under_every_cell(cfg):
    cfg["missing_grid"]["mode"] = "test_only"
    assert {p for _, _, p in missing_grid.grid_runs(cfg)} == {"none"}
    tests = missing_grid.test_protocol_specs(cfg, "demo_openi", "cpimoe", "none")
    assert set(tests) == set(cfg["protocols"]["test"]) | set(missing_grid.dataset_protocols(cfg, "demo_openi"))
    with pytest.raises(missing_grid.GridError, match="miss_primary_20"):
        missing_grid.train_protocol_spec(cfg, "demo_openi", "miss_primary_20")


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda c: c["datasets"]["demo_openi"].__setitem__("modality_roles", {"primary": "ct", "secondary": "note"}),
     "datasets.demo_openi.modality_roles.primary"),
    (lambda c: c["datasets"]["demo_openi"].__setitem__("modality_roles", {"primary": "note", "secondary": "note"}),
     "must differ"),
    (lambda c: c["missing_grid"].__setitem__("methods", ["cpimeo"]), "missing_grid.methods"),
    (lambda c: c["missing_grid"].__setitem__("rates", [1.5]), "missing_grid"),
    (lambda c: c["missing_grid"].__setitem__("setings", ["primary"]), "setings"),
    (lambda c: c["missing_grid"].__setitem__("n_seeds", 0), "missing_grid"),
    (lambda c: c["missing_grid"].update(n_seeds=1, mode="test_only"), "missing_grid.n_seeds"),
])
def test_config_errors_name_the_key(mutate, needle):
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    mutate(raw)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate_config(raw)


def test_grid_runs_train_the_grid_seeds_and_every_other_run_all_seeds(cfg):
    from medmix.plan.runs import run_seeds

    assert missing_grid.grid_seeds(cfg) == cfg["seeds"]  # default: every seed
    assert run_seeds(cfg, "demo_openi", "cpimoe", "miss_primary_20") == cfg["seeds"]
    cfg["missing_grid"]["n_seeds"] = 2
    assert run_seeds(cfg, "demo_openi", "cpimoe", "miss_primary_20") == cfg["seeds"][:2]
    assert run_seeds(cfg, "demo_openi", "medmix", "miss_random_80") == cfg["seeds"][:2]
    assert run_seeds(cfg, "demo_openi", "cpimoe", "none") == cfg["seeds"]  # the clean run: a table row
    assert run_seeds(cfg, "demo_mimic", "cpimoe", "none") == cfg["seeds"]
    # a grid protocol name that is also a declared train protocol is no grid run (config refuses the clash)
    assert not missing_grid.is_grid_run(cfg, "demo_openi", "none")
    cfg["missing_grid"]["mode"] = "test_only"  # the grid reads the clean runs
    assert missing_grid.grid_seeds(cfg) == cfg["seeds"]
    assert not missing_grid.is_grid_run(cfg, "demo_openi", "miss_primary_20")


def test_grid_is_off_without_methods_or_datasets_with_roles():
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["missing_grid"]["methods"] = []
    assert missing_grid.grid_runs(validate_config(raw)) == []
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    for ds in raw["datasets"].values():
        ds.pop("modality_roles", None)
    cfg = validate_config(raw)  # a grid with nothing to run on is valid (a warning), not an error
    assert missing_grid.grid_datasets(cfg) == [] and missing_grid.grid_runs(cfg) == []


def test_mixing_weights_per_cell_are_cpimoe_router_or_medmix_fusion_weights(tmp_path):
    """gate_means: CP-IMoE's `gate:` columns, MedMIX's `fusion:` columns, averaged over the test rows of
    the run's own cell (train_and_test); validation rows and other methods are left out; the heatmap is drawn."""
    import pandas as pd

    from medmix.evaluation.cpimoe_tables import gate_heatmap, gate_means

    cells = [("primary", 0.4, "miss_primary_40"), ("secondary", 0.4, "miss_secondary_40")]
    files = []
    for method, cols in (("cpimoe", {"gate:spec_a": [0.2, 0.4, 0.9], "gate:syn": [0.8, 0.6, 0.1]}),
                         ("medmix", {"fusion:a": [1.0, 0.0, 0.5], "fusion:b": [0.0, 1.0, 0.5]})):
        for _, _, protocol in cells:
            frame = pd.DataFrame({"dataset": "d", "method": method, "train_protocol": protocol,
                                  "test_protocol": protocol, "eval_set": ["test", "test", "val"], **cols})
            files.append(tmp_path / f"{method}_{protocol}.parquet")
            frame.to_parquet(files[-1])
    gates = gate_means([str(f) for f in files], cells, "train_and_test", ["cpimoe", "medmix"])
    assert len(gates) == 8
    row = gates[(gates.method == "cpimoe") & (gates.expert == "spec_a") & (gates.setting == "primary")].iloc[0]
    assert row.weight == pytest.approx(0.3) and row.kind == "router"  # the val row (0.9) is not averaged
    fusion = gates[gates.method == "medmix"]
    assert set(fusion.kind) == {"fusion"} and set(fusion.expert) == {"a", "b"}
    assert fusion.weight.tolist() == pytest.approx([0.5] * 4)
    assert gate_means([str(f) for f in files], cells, "train_and_test",
                      ["medmix"]).method.unique().tolist() == ["medmix"]
    gate_heatmap(gates, "d", "medmix", tmp_path / "fusion.png")
    assert (tmp_path / "fusion.png").stat().st_size > 0
