"""The knowledge base: MedlinePlus health topics (or the shipped demo KB) as one Parquet table.

Columns: ``id`` (str, unique), ``title`` (str), ``synonyms`` (list of str), ``url`` (str, may be
empty), ``text`` (str, plain text). Rows are sorted by ``id``; the file's metadata (key
``medmix_kb``) holds the content hash (:func:`kb_hash`) that index manifests refer to.

Accepted sources (:func:`load_topics`):

- NLM's bulk health-topics XML (``<health-topics><health-topic title= url= id= language=>``
  with ``<also-called>`` synonyms and an HTML ``<full-summary>``); only topics in ``language``
  (English by default) are kept, HTML is reduced to text;
- the per-topic QA XML of MedQuAD's MedlinePlus subset (``<Document id= url=><Focus>`` with
  ``<Synonym>`` entries; the text is the document's answers joined);
- a folder of such XML files (every ``*.xml``, in name order);
- a JSON-lines file in the table's own schema (the shipped demo KB, ``extractors/knowledge/data/demo_kb.jsonl``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as ET
from defusedxml import DefusedXmlException

from medmix.store.atomic import atomic_path

KB_COLUMNS = ("id", "title", "synonyms", "url", "text")
META_KEY = b"medmix_kb"
DEMO_KB = "demo_kb.jsonl"


class KnowledgeBaseError(ValueError):
    """A knowledge-base source or file is unusable (the message names the file and entry)."""


@dataclass(frozen=True)
class Topic:
    id: str
    title: str
    synonyms: tuple[str, ...]
    url: str
    text: str

    def as_row(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "synonyms": list(self.synonyms), "url": self.url, "text": self.text}


# ----------------------------------------------------------------------------- text helpers
def clean_text(text: str | None) -> str:
    """Whitespace collapsed to single spaces, stripped."""
    return re.sub(r"\s+", " ", text or "").strip()


class _TextOnly(HTMLParser):
    _BLOCKS = {"p", "li", "ul", "ol", "br", "div", "h1", "h2", "h3", "h4", "tr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self._BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in self._BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(fragment: str | None) -> str:
    """Plain text of an HTML fragment (tags dropped, entities decoded, whitespace collapsed)."""
    parser = _TextOnly()
    parser.feed(fragment or "")
    parser.close()
    return clean_text("".join(parser.parts))


# ----------------------------------------------------------------------------- XML readers
def _xml_error(path: Path, err: Exception) -> KnowledgeBaseError:
    """The error for a document defusedxml refuses (DTD, entities) or expat cannot parse."""
    if isinstance(err, DefusedXmlException):
        return KnowledgeBaseError(f"{path}: XML with a DOCTYPE/ENTITY declaration is not accepted ({err!r})")
    return KnowledgeBaseError(f"{path}: not well-formed XML ({err})")


def _root_tag(path: Path) -> str:
    try:
        for _, elem in ET.iterparse(path, events=("start",), forbid_dtd=True):
            return elem.tag
    except (ET.ParseError, DefusedXmlException) as err:
        raise _xml_error(path, err) from err
    raise KnowledgeBaseError(f"{path}: empty XML document")


def parse_qa_document(path: Path) -> Topic:
    """One MedQuAD-style ``<Document>`` (per-topic QA layout)."""
    try:
        root = ET.parse(path, forbid_dtd=True).getroot()
    except (ET.ParseError, DefusedXmlException) as err:
        raise _xml_error(path, err) from err
    doc_id = (root.get("id") or "").strip()
    title = clean_text(root.findtext("Focus"))
    answers: list[str] = []
    for answer in root.iter("Answer"):
        text = clean_text("".join(answer.itertext()))
        if text and text not in answers:
            answers.append(text)
    synonyms = tuple(dict.fromkeys(s for s in (clean_text(e.text) for e in root.iter("Synonym")) if s))
    if not doc_id or not title or not answers:
        raise KnowledgeBaseError(f"{path}: QA document lacks an id, a <Focus> title or an <Answer>")
    return Topic(doc_id, title, synonyms, (root.get("url") or "").strip(), " ".join(answers))


def parse_bulk_topics(path: Path, language: str = "English") -> list[Topic]:
    """Every ``<health-topic>`` in ``language`` of NLM's bulk health-topics XML."""
    topics: list[Topic] = []
    try:
        for _, elem in ET.iterparse(path, events=("end",), forbid_dtd=True):
            if elem.tag != "health-topic":
                continue
            if language and (elem.get("language") or "English") != language:
                elem.clear()
                continue
            doc_id, title = (elem.get("id") or "").strip(), clean_text(elem.get("title"))
            synonyms = tuple(dict.fromkeys(s for s in (clean_text(e.text) for e in elem.findall("also-called")) if s))
            text = html_to_text(elem.findtext("full-summary"))
            if not doc_id or not title or not text:
                raise KnowledgeBaseError(f"{path}: health-topic {doc_id or title!r} lacks an id, a "
                                         "title or a full-summary")
            topics.append(Topic(doc_id, title, synonyms, (elem.get("url") or "").strip(), text))
            elem.clear()
    except (ET.ParseError, DefusedXmlException) as err:
        raise _xml_error(path, err) from err
    return topics


def parse_xml(path: str | Path, language: str = "English") -> list[Topic]:
    """Topics of one XML file in either layout (detected from the root element)."""
    path = Path(path)
    tag = _root_tag(path)
    if tag == "health-topics":
        return parse_bulk_topics(path, language)
    if tag == "Document":
        return [parse_qa_document(path)]
    raise KnowledgeBaseError(f"{path}: root element <{tag}> is neither <health-topics> nor <Document>")


def read_jsonl(path: str | Path) -> list[Topic]:
    """Topics from a JSON-lines file in the knowledge-base schema (the demo KB)."""
    topics = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                syn = row.get("synonyms") or []
                syn = [s.strip() for s in syn.split(";")] if isinstance(syn, str) else list(syn)
                topics.append(Topic(str(row["id"]), clean_text(row["title"]), tuple(s for s in syn if s),
                                    str(row.get("url") or ""), clean_text(row["text"])))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise KnowledgeBaseError(f"{path}:{lineno}: not a knowledge-base row ({err})") from err
    return topics


def demo_kb_path() -> Path:
    """The demo knowledge base shipped with the package (short entries written for this project)."""
    return Path(str(resources.files("extractors.knowledge") / "data" / DEMO_KB))


def load_topics(source: str | Path, language: str = "English") -> list[Topic]:
    """Topics of ``source``: ``demo``, a JSON-lines file, an XML file or a folder of XML files."""
    if str(source) == "demo":
        source = demo_kb_path()
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
        if not files:
            raise KnowledgeBaseError(f"{source}: no *.xml files")
        return [t for f in files for t in parse_xml(f, language)]
    if not source.exists():
        raise KnowledgeBaseError(f"knowledge-base source {source} does not exist")
    if source.suffix.lower() == ".jsonl":
        return read_jsonl(source)
    return parse_xml(source, language)


# ----------------------------------------------------------------------------- the table
def validate_topics(topics: list[Topic]) -> list[Topic]:
    """Sorted by id; fails on duplicate ids or empty titles/texts."""
    if not topics:
        raise KnowledgeBaseError("the knowledge base is empty")
    seen: set[str] = set()
    for t in topics:
        if t.id in seen:
            raise KnowledgeBaseError(f"duplicate knowledge-base id {t.id!r} ({t.title!r})")
        if not t.title or not t.text:
            raise KnowledgeBaseError(f"knowledge-base entry {t.id!r} has an empty title or text")
        seen.add(t.id)
    return sorted(topics, key=lambda t: t.id)


def kb_hash(topics: list[Topic]) -> str:
    """SHA-256 of the canonical JSON of the rows in id order (independent of the Parquet writer)."""
    h = hashlib.sha256()
    for t in sorted(topics, key=lambda t: t.id):
        h.update(json.dumps(t.as_row(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def write_kb(topics: list[Topic], out_path: str | Path, source: str = "") -> dict[str, Any]:
    """Atomically write the knowledge-base Parquet; returns its summary (n, hash)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    topics = validate_topics(list(topics))
    meta = {"kb_hash": kb_hash(topics), "n": len(topics), "source": str(source)}
    schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("synonyms", pa.list_(pa.string())),
                        ("url", pa.string()), ("text", pa.string())])
    table = pa.Table.from_pylist([t.as_row() for t in topics], schema=schema)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})

    def verify(tmp: Path) -> None:
        if pq.read_metadata(tmp).num_rows != len(topics):
            raise KnowledgeBaseError(f"{out_path}: read-back check failed")

    with atomic_path(out_path, verify=verify) as tmp:
        pq.write_table(table, tmp)
    return meta


def read_kb(path: str | Path) -> list[Topic]:
    """The topics of a knowledge-base Parquet written by :func:`write_kb`."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise KnowledgeBaseError(f"knowledge base {path} does not exist")
    table = pq.read_table(path)
    missing = set(KB_COLUMNS) - set(table.column_names)
    if missing:
        raise KnowledgeBaseError(f"{path}: missing column(s) {sorted(missing)}")
    return [Topic(r["id"], r["title"], tuple(r["synonyms"] or ()), r["url"] or "", r["text"])
            for r in table.select(list(KB_COLUMNS)).to_pylist()]


def read_kb_meta(path: str | Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    if META_KEY not in raw:
        raise KnowledgeBaseError(f"{path}: no medmix_kb metadata; not written by write_kb")
    return json.loads(raw[META_KEY])


def ingest(source: str | Path, out_path: str | Path, language: str = "English") -> dict[str, Any]:
    """``source`` (see :func:`load_topics`) -> the knowledge-base Parquet at ``out_path``."""
    return write_kb(load_topics(source, language), out_path, source=str(source))
