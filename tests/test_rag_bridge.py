"""Stage 1 of the RAG experts: EHR serialisation, pass-through text, cached bridged reports, guards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from extractors.base import InputError, ModelUnavailableError
from extractors.knowledge.bridge import (
    BridgedText,
    Maira2Bridge,
    ReportBridge,
    create_bridge,
    run_bridge,
    serialise_ehr,
    write_bridge,
)
from extractors.registry import create_extractor


def test_serialiser_field_order_last_value_and_missing():
    frame = pd.DataFrame({
        "hour": [0, 1, 2],
        "sbp": [120.0, np.nan, 95.5],
        "heart_rate": [80, 88, np.nan],  # last observed is 88, not the trailing gap
        "lactate": [np.nan, np.nan, np.nan],  # never observed
        "gcs_verbal": ["Oriented", "Confused", ""],  # text values kept
        "age": [64, 64, 64],
    })
    text = serialise_ehr(frame)
    assert text == "sbp: 95.5; heart_rate: 88; lactate: missing; gcs_verbal: Confused; age: 64"
    # A fixed variable list sets the order; variables absent from the series are written missing.
    fixed = serialise_ehr(frame, ["age", "lactate", "heart_rate", "creatinine"])
    assert fixed == "age: 64; lactate: missing; heart_rate: 88; creatinine: missing"


def test_serialiser_covers_all_46_demo_variables_in_column_order(tmp_path):
    from medmix.demo.ehr_variables import EHR_VARIABLES

    names = list(EHR_VARIABLES)
    rows = np.full((3, len(names)), np.nan)
    rows[0, 0], rows[2, 0] = 80, 101  # heart_rate: last observed 101
    rows[1, 5] = 97  # spo2
    frame = pd.DataFrame(rows, columns=names)
    frame.insert(0, "hour", [0, 1, 2])
    path = tmp_path / "ehr.csv"
    frame.to_csv(path, index=False)
    ex = create_extractor("rag_minilm", {"options": {"index_dir": str(tmp_path / "unused")}})
    text = ex.prepare(str(path))  # prepare needs no model and no index
    fields = text.split("; ")
    assert len(fields) == 46 and [f.split(": ")[0] for f in fields] == names
    assert fields[0] == "heart_rate: 101" and fields[5] == "spo2: 97"
    assert sum(f.endswith(": missing") for f in fields) == 44


def test_prepare_text_passthrough_and_bad_inputs(tmp_path):
    ex = create_extractor("rag_minilm", {"options": {"index_dir": str(tmp_path)}})
    note = "  FINDINGS: small left pleural effusion.\nIMPRESSION: effusion.  "
    assert ex.prepare(note) == note  # unchanged
    with pytest.raises(InputError):
        ex.prepare("   ")
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"hour": [0, 1], "sbp": [np.nan, np.nan]}).to_csv(empty, index=False)
    with pytest.raises(InputError, match="no observed values"):
        ex.prepare(str(empty))
    with pytest.raises(InputError, match="not found"):
        ex.prepare(str(tmp_path / "gone.csv"))  # a missing series file is not embedded as a note
    # rag_minilm has no offline bridge, so image inputs are refused with a reason.
    img = create_extractor("rag_minilm", {"options": {"index_dir": str(tmp_path), "kind": "image"}})
    with pytest.raises(InputError, match="cannot read 'image'"):
        img.prepare(str(tmp_path / "x.png"))


def test_bridged_reports_are_cached_and_looked_up_by_input(tmp_path):
    path = tmp_path / "bridge.parquet"
    write_bridge(path, ["s1", "s2", "s3"], ["/d/a.png", "/d/b.png", None],
                 ["Small left effusion.", None, None], [None, "unreadable image /d/b.png", "missing in cohort"],
                 {"bridge": "maira2", "model_id": "microsoft/maira-2"})
    bridged = BridgedText.read(path)
    assert bridged.metadata["n_present"] == 1 and bridged.metadata["bridge"] == "maira2"
    ex = create_extractor("rag_medcpt_qwen2", {"options": {"index_dir": str(tmp_path), "bridge_path": str(path)}})
    assert ex.prepare("/d/a.png") == "Small left effusion."
    with pytest.raises(InputError, match="unreadable image"):
        ex.prepare("/d/b.png")
    with pytest.raises(InputError, match="no bridged report"):
        ex.prepare("/d/zzz.png")


class _EchoBridge(ReportBridge):
    """A stand-in generator for testing the caching logic only (no model)."""

    name, kind = "echo", "image"

    def load(self):
        self.loaded = True

    def generate(self, value):
        if "bad" in value:
            raise InputError(f"unreadable image {value}")
        return f"report for {value}"


def test_run_bridge_records_failures_and_missing(tmp_path):
    out = tmp_path / "b.parquet"
    summary = run_bridge(_EchoBridge(), ["a", "b", "c"], ["/x/1.png", "/x/bad.png", None], out)
    assert summary == {"bridge": "echo", "n": 3, "present": 1, "failed": 1}
    table = pd.read_parquet(out)
    assert table["sample_id"].tolist() == ["a", "b", "c"]
    assert table["present"].tolist() == [True, False, False]
    assert table["reason"].tolist()[1:] == ["unreadable image /x/bad.png", "missing in cohort"]
    nothing = _EchoBridge()
    run_bridge(nothing, ["a"], [None], tmp_path / "none.parquet")
    assert not hasattr(nothing, "loaded")  # no model load when nothing is present


def test_maira2_remote_code_guard():
    with pytest.raises(ModelUnavailableError, match="allow_remote_code"):
        create_bridge("maira2").load()
    with pytest.raises(ModelUnavailableError, match="only to 'microsoft/maira-2'"):
        create_bridge("maira2", {"model_id": "someone/else", "allow_remote_code": True}).load()
    with pytest.raises(ModelUnavailableError, match="pinned commit"):
        create_bridge("maira2", {"allow_remote_code": True, "revision": "main"}).load()
    assert len(Maira2Bridge.default_revision) == 40
    with pytest.raises(InputError, match="frontal"):
        create_bridge("maira2").generate({"frontal": None, "lateral": "/x/lat.png"})


def test_merlin_and_histgen_unavailable_here_are_explained(tmp_path):
    with pytest.raises(ModelUnavailableError, match="merlin"):
        create_bridge("merlin").load()
    with pytest.raises(ModelUnavailableError, match="checkpoint"):
        create_bridge("histgen").load()
    with pytest.raises(InputError, match="NIfTI"):
        create_bridge("merlin").generate(str(tmp_path / "scan.npy"))
    with pytest.raises(InputError, match=r"\.pt"):
        create_bridge("histgen").generate(str(tmp_path / "slide.svs"))
    with pytest.raises(KeyError, match="unknown bridge"):
        create_bridge("nope")
