"""Every reader bounds its memory before parsing or decoding (issue 12, item 9).

Limits are lowered with ``monkeypatch`` so that tiny files written here cross them; the files
that cross a limit are built so that parsing them would fail differently (or take the memory the
limit guards), which shows the check comes first.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import extractors.inputs as inputs
from extractors.base import InputError
from extractors.inputs import read_image, read_timeseries, read_volume
from extractors.knowledge.kb import KnowledgeBaseError, load_topics
from medmix.cohort import CohortError
from medmix.datasets import build_cohort


# ----------------------------------------------------------------------------- time series
def test_timeseries_file_over_the_byte_limit_is_refused_unparsed(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"\x00\xff" * 600)  # not CSV at all: a parser would report something else
    monkeypatch.setattr(inputs, "MAX_TIMESERIES_BYTES", 1000)
    with pytest.raises(InputError, match=r"big\.csv is 1200 bytes \(limit 1000\); not parsed"):
        read_timeseries(str(path))


def test_timeseries_csv_over_the_cell_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "long.csv"
    pd.DataFrame({"hr": np.arange(10.0), "sbp": np.arange(10.0), "rr": np.arange(10.0)}).to_csv(path, index=False)
    monkeypatch.setattr(inputs, "MAX_TIMESERIES_CELLS", 30)
    assert read_timeseries(str(path)).shape == (10, 3)  # exactly at the limit
    monkeypatch.setattr(inputs, "MAX_TIMESERIES_CELLS", 20)
    with pytest.raises(InputError, match=r"long\.csv has over 6 rows x 3 columns \(limit 20 cells\)"):
        read_timeseries(str(path))


def test_timeseries_parquet_over_the_cell_limit_is_refused_from_its_footer(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "long.parquet"
    pd.DataFrame({"hr": np.arange(10.0), "sbp": np.arange(10.0)}).to_parquet(path)
    monkeypatch.setattr(inputs, "MAX_TIMESERIES_CELLS", 19)
    with pytest.raises(InputError, match=r"long\.parquet has 10 rows x 2 columns .*not read"):
        read_timeseries(str(path))


# ----------------------------------------------------------------------------- images
def test_image_between_one_and_two_times_the_pixel_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Pillow only warns in (1x, 2x] of MAX_IMAGE_PIXELS; the reader refuses there too."""
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (30, 30), (10, 20, 30)).save(small)  # 900 pixels
    Image.new("RGB", (40, 40), (10, 20, 30)).save(large)  # 1600 pixels: over 1x, under 2x
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_image(str(small)).size == (30, 30)
    with pytest.raises(InputError, match=r"large\.png exceeds the decompression-bomb pixel limit \(1000 pixels\)"):
        read_image(str(large))
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is neither raised nor removed by the reader


def test_pillow_limit_is_left_at_its_default() -> None:
    import extractors.inputs  # noqa: F401 - importing the readers must not touch the limit

    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


# ----------------------------------------------------------------------------- NIfTI
def test_nifti_header_shape_is_checked_before_any_voxel_is_read(tmp_path: Path) -> None:
    """A 4 KiB file whose header claims 2048^3 float32 voxels is refused from the header."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float32)
    path = tmp_path / "claims_32gib.nii"
    with open(path, "wb") as fh:
        header.write_to(fh)
        fh.write(b"\x00" * 4096)  # far fewer bytes than the header claims
    with pytest.raises(InputError, match=r"claims_32gib\.nii would need 32\.0 GiB"):
        read_volume(str(path))


# ----------------------------------------------------------------------------- XML (defusedxml)
_ENTITY_DOC = ('<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
               '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n{body}')


def test_knowledge_base_refuses_entities_in_utf16(tmp_path: Path) -> None:
    path = tmp_path / "evil16.xml"
    doc = _ENTITY_DOC.format(body='<Document id="1"><Focus>&b;</Focus><Answer>x</Answer></Document>')
    path.write_bytes(doc.encode("utf-16"))
    assert b"<!DOCTYPE" not in path.read_bytes()  # a byte check would let it through
    with pytest.raises(KnowledgeBaseError, match=r"evil16\.xml: XML with a DOCTYPE/ENTITY declaration"):
        load_topics(path)
    plain = tmp_path / "ok16.xml"
    plain.write_bytes('<?xml version="1.0" encoding="UTF-16"?>\n<Document id="7"><Focus>Asthma</Focus>'
                      '<Answer>Airways narrow.</Answer></Document>'.encode("utf-16"))
    [topic] = load_topics(plain)
    assert (topic.id, topic.title, topic.text) == ("7", "Asthma", "Airways narrow.")


def test_iu_xray_report_refuses_entities_in_utf16(tmp_path: Path) -> None:
    xml_dir = tmp_path / "x"
    xml_dir.mkdir()
    (tmp_path / "p.csv").write_text("uid,filename,projection\n")
    cfg = {"adapter": "iu_xray", "reports_xml_dir": str(xml_dir), "projections_csv": str(tmp_path / "p.csv")}
    (xml_dir / "1.xml").write_bytes(_ENTITY_DOC.format(body="<eCitation>&b;</eCitation>").encode("utf-16"))
    with pytest.raises(CohortError, match=r"1\.xml declares XML entities"):
        build_cohort("x", cfg, ".")


def test_merlin_report_bridge_bounds_the_volume_before_its_own_loader(tmp_path: Path) -> None:
    """Merlin's DataLoader decodes whole volumes; the bridge checks the header first."""
    from extractors.knowledge.bridge import MerlinBridge

    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.int16)
    path = tmp_path / "claims_big.nii"
    with open(path, "wb") as fh:
        header.write_to(fh)
    with pytest.raises(InputError, match=r"claims_big\.nii would need 32\.0 GiB"):
        MerlinBridge().generate(str(path))  # refused before the (unloaded) model is needed
