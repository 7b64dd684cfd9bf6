"""Knowledge-base ingest: MedlinePlus QA XML (real files), NLM bulk XML, the shipped demo KB."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from extractors.knowledge.kb import (
    KnowledgeBaseError,
    demo_kb_path,
    html_to_text,
    ingest,
    kb_hash,
    load_topics,
    read_kb,
    read_kb_meta,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medlineplus"

BULK = """<?xml version="1.0" encoding="UTF-8"?>
<health-topics total="3" date-generated="01/01/2024 00:00:00">
<health-topic meta-desc="Fluid around the lungs" title="Pleural Disorders" url="https://medlineplus.gov/pleuraldisorders.html"
  id="2993" language="English" date-created="01/01/2003">
 <also-called>Pleurisy</also-called><also-called>Pleural effusion</also-called>
 <full-summary>&lt;p&gt;Your &lt;b&gt;pleura&lt;/b&gt; is a thin sheet of tissue.&lt;/p&gt;\
&lt;ul&gt;&lt;li&gt;Pleural effusion &amp;amp; fluid&lt;/li&gt;&lt;/ul&gt;</full-summary>
 <group url="https://medlineplus.gov/lungsandbreathing.html" id="20">Lungs and Breathing</group>
 <mesh-heading><descriptor id="D010995">Pleural Diseases</descriptor></mesh-heading>
 <related-topic url="https://medlineplus.gov/lungdiseases.html" id="1">Lung Diseases</related-topic>
 <site title="Pleurisy" url="https://example.org"><information-category>Symptoms</information-category></site>
</health-topic>
<health-topic title="Enfermedades de la pleura" url="https://medlineplus.gov/spanish/pleuraldisorders.html" id="3993"
  language="Spanish"><full-summary>&lt;p&gt;La pleura.&lt;/p&gt;</full-summary></health-topic>
<health-topic title="Sepsis" url="https://medlineplus.gov/sepsis.html" id="5000" language="English">
 <full-summary>&lt;p&gt;Sepsis is a serious condition.&lt;/p&gt;</full-summary></health-topic>
</health-topics>
"""


def _need_data() -> None:
    if not DATA.is_dir():
        pytest.fail(f"real MedlinePlus documents not found at {DATA} (the tests need ../shared/data beside the repo)")


def test_real_qa_xml_folder(tmp_path):
    _need_data()
    meta = ingest(DATA, tmp_path / "kb.parquet")
    topics = read_kb(tmp_path / "kb.parquet")
    assert meta["n"] == len(topics) == 981
    assert read_kb_meta(tmp_path / "kb.parquet")["kb_hash"] == kb_hash(topics) == meta["kb_hash"]
    by_title = {t.title: t for t in topics}
    a1c = by_title["A1C"]
    assert a1c.id == "0000001" and a1c.url == "https://www.nlm.nih.gov/medlineplus/a1c.html"
    assert a1c.synonyms == ("Glycohemoglobin", "HbA1C", "Hemoglobin A1C test")
    assert "blood test for type 2 diabetes" in a1c.text and "\n" not in a1c.text
    pleural = by_title["Pleural Disorders"]
    assert "Pleural effusion - excess fluid in the pleural space" in pleural.text
    assert "&apos;" not in pleural.text and "it's filled" in pleural.text
    assert [t.id for t in topics] == sorted(t.id for t in topics)
    schema = pq.read_schema(tmp_path / "kb.parquet")
    assert schema.names == ["id", "title", "synonyms", "url", "text"]
    assert pa.types.is_list(schema.field("synonyms").type)
    assert pa.types.is_string(schema.field("synonyms").type.value_type)


def test_bulk_health_topics_layout(tmp_path):
    src = tmp_path / "mplus_topics.xml"
    src.write_text(BULK)
    topics = load_topics(src)
    assert [t.title for t in topics] == ["Pleural Disorders", "Sepsis"]  # Spanish topic skipped
    pleural = topics[0]
    assert pleural.id == "2993" and pleural.synonyms == ("Pleurisy", "Pleural effusion")
    assert pleural.text == "Your pleura is a thin sheet of tissue. Pleural effusion & fluid"
    assert [t.title for t in load_topics(src, language="Spanish")] == ["Enfermedades de la pleura"]
    ingest(src, tmp_path / "kb.parquet")
    assert read_kb(tmp_path / "kb.parquet") == sorted(topics, key=lambda t: t.id)


def test_demo_kb_ships_and_covers_demo_conditions(tmp_path):
    assert demo_kb_path().is_file()
    meta = ingest("demo", tmp_path / "kb.parquet")
    topics = read_kb(tmp_path / "kb.parquet")
    assert 30 <= meta["n"] == len(topics) <= 60
    titles = " | ".join(t.title.lower() for t in topics)
    for needle in ("pleural effusion", "pneumonia", "pulmonary nodule", "cardiomegaly", "heart failure",
                   "atelectasis", "pneumothorax", "sepsis", "acute kidney injury", "shock", "hypoxemia",
                   "lactic acidosis", "tachycardia", "length of stay", "readmission", "renal cell carcinoma",
                   "liver lesion"):
        assert needle in titles, needle
    assert all(t.text and t.synonyms and t.url.startswith("medmix:demo-kb/") for t in topics)


def test_rebuilt_kb_is_byte_identical(tmp_path):
    ingest("demo", tmp_path / "a.parquet")
    ingest("demo", tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_html_to_text():
    # nbsp is whitespace too
    assert html_to_text("<p>A&nbsp;b</p><ul><li>one</li><li>two &amp; three</li></ul>") == "A b one two & three"


def test_bad_sources_are_named(tmp_path):
    dtd = tmp_path / "evil.xml"
    dtd.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><Document '
                   'id="1"><Focus>&a;</Focus></Document>')
    with pytest.raises(KnowledgeBaseError, match="DOCTYPE"):
        load_topics(dtd)
    other = tmp_path / "other.xml"
    other.write_text("<foo/>")
    with pytest.raises(KnowledgeBaseError, match="neither"):
        load_topics(other)
    broken = tmp_path / "broken.xml"
    broken.write_text("<Document id='1'><Focus>x</Focus>")
    with pytest.raises(KnowledgeBaseError, match="well-formed"):
        load_topics(broken)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "1", "title": "a", "text": "x"}\n{"id": "1", "title": "b", "text": "y"}\n')
    with pytest.raises(KnowledgeBaseError, match="duplicate"):
        ingest(dup, tmp_path / "kb.parquet")
    assert not (tmp_path / "kb.parquet").exists()
    with pytest.raises(KnowledgeBaseError, match="does not exist"):
        load_topics(tmp_path / "missing.jsonl")
