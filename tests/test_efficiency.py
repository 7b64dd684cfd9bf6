"""Table E6 / Fig. 5: the cost counters, the experts' declared costs, EffScore and the table layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from extractors.costs import MINILM_L6_CONFIG, bert_params
from extractors.registry import get_spec
from medmix.evaluation import efficiency_table as et
from medmix.evaluation.paper_tables import PaperTable
from medmix.methods.base import Prediction
from medmix.methods.gbdt import _leaf_depths, lgb_trees
from medmix.methods.linear_probe import linear_cost
from medmix.pipeline import efficiency as ef
from medmix.training.synthetic import synthetic_data


def _flops_per_sample(module: nn.Module, n: int, d: int) -> float:
    with torch.no_grad():
        _, flops = ef.count_flops(lambda: module(torch.randn(n, d)))
    return flops / n


def test_linear_params_and_flops():
    lin = nn.Linear(10, 5)
    assert ef.state_params(lin.state_dict()) == 50 + 5
    assert _flops_per_sample(lin, 8, 10) == 2 * 10 * 5
    assert linear_cost(10, 5) == {"params": 55, "flops_per_sample": 100.0, "flops_kind": "flops"}


def test_mlp_params_and_flops():
    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    assert ef.state_params(mlp.state_dict()) == (10 * 20 + 20) + (20 * 3 + 3)
    assert _flops_per_sample(mlp, 4, 10) == 2 * (10 * 20 + 20 * 3)


def test_peak_live_tensors_on_a_known_pattern():
    with ef.PeakLiveTensors() as t:
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(2000)  # 8000 B: 12000 live
        view = b[:10]  # shares b's storage: no new bytes
        del a
        c = torch.empty(500)  # 10000 live
        del b
    assert t.peak == 12000
    assert t.current == 8000 + 2000  # b's storage lives on through the view, plus c
    del view, c
    assert t.current == 0


class _TinyEnsemble:
    """A two-seed stand-in for a torch FusionMethod: predict runs each seed's linear layer."""

    name = "tiny"
    numpy_predict = False

    def __init__(self):
        self.seeds = [0, 1]
        self.nets = [nn.Linear(6, 2) for _ in self.seeds]

    def export(self):
        return {}, [net.state_dict() for net in self.nets]

    def cost(self, batch):
        return None  # counted by the efficiency job (FusionMethod.cost's default)

    def predict(self, data):
        x = data.x["a"][0]
        with torch.no_grad():
            return Prediction(np.stack([torch.sigmoid(net(x)).numpy() for net in self.nets]))


def test_method_cost_is_one_seed():
    data = synthetic_data(n=40, dims={"a": [6]}, seed=0)
    cost = ef.method_cost(_TinyEnsemble(), data, "cpu")
    assert cost["params"] == 6 * 2 + 2 and cost["flops_per_sample"] == 2 * 6 * 2
    assert cost["batch_size"] == 40 and cost["seeds_in_predict"] == 2 and cost["device"] == "cpu"
    assert cost["param_bytes"] == 14 * 4
    assert cost["peak_mem_bytes"] >= cost["param_bytes"] + ef.batch_bytes(data) + 40 * 2 * 4


@pytest.mark.parametrize("name", ["linear_probe", "gbdt"])
def test_numpy_methods_count_their_own_cost_on_the_cpu(name):
    """gbdt and linear_probe count their cost themselves (FusionMethod.cost), on the CPU, with the
    tracemalloc peak; what they report is what their fitted state holds."""
    from medmix.methods import create_method
    from medmix.protocols import Protocol

    data = synthetic_data(n=120, dims={"a": [6], "b": [4]}, n_labels=2, seed=0)
    params = {"lp_c_grid": [1.0]} if name == "linear_probe" else {"gbdt_num_leaves": [3], "gbdt_learning_rate": [0.3],
                                                                  "gbdt_max_rounds": 5}
    method = create_method(name, params)
    method.fit(data.split_part("train"), data.split_part("val"), [0], Protocol("none"))
    assert method.numpy_predict and ef.predict_device(method).type == "cpu"
    cost = ef.fit_cost(method, data.split_part("val"))
    assert cost["memory_method"].startswith("cpu tracemalloc")
    if name == "linear_probe":
        d_in = 6 + 4 + 2  # embeddings + one presence flag per expert
        assert cost["params"] == 2 * d_in + 2 and cost["flops_per_sample"] == 2 * d_in * 2
        assert cost["flops_kind"] == "flops"
    else:
        trees = [lgb_trees(m) for m in method.models[0] if isinstance(m, str)]
        assert cost["params"] == sum(2 * len(t) - 1 for ts in trees for t in ts) and cost["flops_kind"] == "comparisons"


def test_lightgbm_tree_depths():
    # root 0 -> (node 1, leaf 0); node 1 -> (leaf 1, leaf 2)
    assert _leaf_depths([1, -2], [-1, -3]) == {0: 1, 1: 2, 2: 2}
    text = "tree\nTree=0\nnum_leaves=3\nleft_child=1 -2\nright_child=-1 -3\n\nTree=1\nnum_leaves=1\n\nend of trees\n"
    assert lgb_trees(text) == [{0: 1, 1: 2, 2: 2}, {0: 0}]


def test_minilm_params_from_its_bert_config():
    assert bert_params(MINILM_L6_CONFIG) == 22_713_216
    spec = get_spec("minilm_l6")
    assert spec.params == 22_713_216 and spec.flops_per_sample > 0 and "config" in spec.cost_note
    for name in ("image_texture", "text_keywords", "ts_minirocket", "ct_intensity_profile"):
        assert get_spec(name).params == 0 and get_spec(name).flops_per_sample is None


def test_deployed_experts_exclude_rag_and_teachers():
    committee = {"note": {"committee": [["kw", "biomed"], ["minilm", "general"], ["rag", "rag"]], "teacher": "big"},
                 "img": {"committee": [["tex", "biomed"]], "teacher": None}}
    assert et.deployed_experts(committee, "medmix") == [("note", "kw"), ("note", "minilm"), ("img", "tex")]
    assert et.deployed_experts(committee, "large_ref_note") == [("note", "big")]
    assert et.deployed_experts(committee, "large_ref_img") == []


# ----------------------------------------------------------------------------- Table E6
def _table1(perfs: dict[str, float]) -> PaperTable:
    rows = [{"dataset": "dev", "method": m, "seed": s, "auroc": p, "auprc": p, "mf1": p, "acc": p}
            for m, p in perfs.items() for s in (0, 1)]
    return PaperTable("table1", pd.DataFrame(rows), ["dataset"])


def _cost(params, flops, mem):
    return {"params": params, "flops_per_sample": flops, "peak_mem_bytes": mem, "flops_kind": "flops",
            "device": "cpu", "batch_size": 8}


EXPERT = {"modality": "note", "name": "enc", "role": "general", "params": 1000, "flops_per_sample": 5000.0,
          "cost_note": "config"}


@pytest.fixture
def frame():
    table1 = _table1({"meanavg": 0.6, "big": 0.7, "medmix": 0.8})
    fits = {("dev", "meanavg"): _cost(100, 1000.0, 4000), ("dev", "medmix"): _cost(100, 1000.0, 4000),
            ("dev", "big"): _cost(1100, 11000.0, 12000)}
    experts = {"dev": {"meanavg": [EXPERT], "medmix": [EXPERT], "big": [EXPERT]}}
    return et.efficiency_frame(table1, fits, experts)


def test_effscore_hand_computed(frame):
    rows = frame.set_index("method")
    assert rows.loc["medmix", "effscore"] == pytest.approx(1.0)
    # totals: medmix 1100 params, 6000 FLOPs, 4000 + 4000 B; big 2100, 16000, 16000 B
    assert rows.loc["big", "params_total"] == 2100 and rows.loc["big", "mem_total"] == 16000
    cost = ((2100 / 1100) * (16000 / 6000) * (16000 / 8000)) ** (1 / 3)
    assert rows.loc["big", "effscore"] == pytest.approx((0.7 / 0.8) / cost)
    assert rows.loc["meanavg", "effscore"] == pytest.approx(0.6 / 0.8)
    assert not frame.effscore_approx.any() and not frame.params_lower_bound.any()


def test_table_markdown_layout(frame):
    md = et.to_markdown(frame)
    lines = md.splitlines()
    assert lines[0] == f"# {et.TITLE}"
    header = "| dataset | method | Params (M) fusion | Params (M) total | FLOPs (M)/sample fusion | " \
             "FLOPs (M)/sample total | Peak Mem (MB) fusion | Peak Mem (MB) total | Perf | EffScore |"
    assert lines[2] == header
    assert [ln.split(" | ")[1] for ln in lines[4:7]] == ["meanavg", "big", "medmix"]
    assert lines[6].endswith("| 0.8000 | 1.000 |")
    assert "EffScore of MedMIX = 1" in md and "RAG stage" in md
    assert "\\toprule" in et.to_latex(frame)


def test_undeclared_expert_marks_lower_bounds():
    table1 = _table1({"medmix": 0.8, "other": 0.7})
    fits = {("dev", m): _cost(100, 1000.0, 4000) for m in ("medmix", "other")}
    unknown = {**EXPERT, "name": "mystery", "params": None, "flops_per_sample": None}
    frame = et.efficiency_frame(table1, fits, {"dev": {"medmix": [EXPERT], "other": [EXPERT, unknown]}})
    md = et.to_markdown(frame)
    row = next(ln for ln in md.splitlines() if "| other |" in ln)
    assert "≥ " in row and "≈ " in row
    assert next(ln for ln in md.splitlines() if "| medmix |" in ln).endswith("| 1.000 |")  # 1 by definition
    assert "mystery" in md


def test_no_medmix_says_so():
    frame = et.efficiency_frame(_table1({"meanavg": 0.6}), {("dev", "meanavg"): _cost(1, 2.0, 3)}, {})
    assert frame.effscore.isna().all()
    assert "no `medmix` run is configured" in et.to_markdown(frame)


# ----------------------------------------------------------------------------- the evaluate job
def test_evaluate_dataset_job_writes_predictions_and_the_table_runs_costs(tmp_path, monkeypatch):
    from medmix.pipeline import fit as fit_mod
    from medmix.protocols import Protocol

    data = synthetic_data(n=120, dims={"a": [8], "b": [6]}, n_labels=2, seed=3)
    monkeypatch.setattr(fit_mod, "load_dataset", lambda *a, **k: data)
    for run in ("probe", "probe_grid"):
        fit_mod.fit_job(method="linear_probe", run=run, cohort_path="unused", committee={}, features={},
                        identities={}, params={}, seeds=[0, 1], train_protocol=Protocol("none"),
                        out_model=str(tmp_path / run / "model"), out_curves=str(tmp_path / run / "curves.csv"),
                        out_info=str(tmp_path / run / "fit.json"))
    assert "cost" not in json.loads((tmp_path / "probe/fit.json").read_text())  # measured by evaluate
    cohort = {"cohort": "dev", "cohort_path": "unused", "committee": {}, "features": {}, "identities": {}}
    runs = [{"run": run, "train_protocol": "none", "model_dir": str(tmp_path / run / "model"), "cost": run == "probe",
             "test_protocols": {"none": {"kind": "none"}},
             "cohorts": [{**cohort, "out": str(tmp_path / run / "dev.parquet")}]} for run in ("probe", "probe_grid")]
    costs = tmp_path / "costs.json"
    fit_mod.evaluate_dataset_job(dataset="dev", runs=runs, out_costs=str(costs))
    for run in ("probe", "probe_grid"):
        pred = pd.read_parquet(tmp_path / run / "dev.parquet")
        assert set(pred.method) == {run} and set(pred.eval_set) == {"val", "test"} and set(pred.seed) == {0, 1}
    doc = json.loads(costs.read_text())
    assert doc["dataset"] == "dev" and list(doc["costs"]) == ["probe"]  # only the runs marked `cost`
    cost = et.read_costs([str(costs)])[("dev", "probe")]
    d, c = 8 + 6 + 2, 2  # embeddings + one presence flag per expert; two labels
    assert cost["params"] == d * c + c and cost["flops_per_sample"] == 2 * d * c
    assert cost["batch_size"] == int((data.split == "val").sum()) and cost["device"] == "cpu"
    assert cost["peak_mem_bytes"] > cost["param_bytes"] > 0


def test_latex_escapes_every_special_character_in_a_run_name():
    special, tex = "r&u%n$#_{x}~^\\z", r"r\&u\%n\$\#\_\{x\}\textasciitilde{}\textasciicircum{}\textbackslash{}z"
    table1 = _table1({special: 0.6, "medmix": 0.8})
    fits = {("dev", m): _cost(100, 1000.0, 4000) for m in (special, "medmix")}
    unknown = {**EXPERT, "name": "mystery", "params": None, "flops_per_sample": None}
    frame = et.efficiency_frame(table1, fits, {"dev": {special: [EXPERT, unknown], "medmix": [EXPERT]}})
    row = next(line for line in et.to_latex(frame).splitlines() if line.startswith("dev & r"))
    assert row.startswith(f"dev & {tex} & 0.0001 & $\\geq$ ") and row.endswith("& 0.6000 & $\\approx$ 0.750 \\\\")
