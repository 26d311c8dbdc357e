"""Turning files into documents, with each document's problem reported instead of raised.

Supported: ``.txt``, ``.md``/``.markdown`` (kept as is), ``.html``/``.htm`` (visible text),
``.pdf`` (text layer, through pypdf) and ``.jsonl`` (one document per line). Text must be
UTF-8 (a BOM is accepted): other encodings are reported, never guessed.

A bad file, or a bad line of a JSONL file, becomes a :class:`DocumentProblem` and the rest
carry on, so one broken file never stops an ingestion. Everything here is synchronous: the
caller runs it through the thread bridge.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .access import normalize_entries
from .discovery import SUFFIXES, discover, find, os_reason, relative_name
from .errors import InvalidRequest
from .models import Document, DocumentProblem
from .prose import html_text, markdown_title

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUFFIXES",
    "Document",
    "DocumentProblem",
    "discover",
    "load",
    "load_all",
    "read_acl",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""The largest file :func:`load` reads by default (for JSONL: the largest line)."""
_SNIFF_BYTES = 8192
_UTF16_32_BOMS = (
    codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
)


def load(
    path: Path, *, root: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Document | DocumentProblem]:
    """The documents in ``path`` and the problems met, chosen by its suffix.

    A document's id and source are ``path`` relative to ``root`` with ``/`` separators (the
    file name without a root); a JSONL line's source is ``"name.jsonl:LINE"`` and its id
    comes from the line. ``max_bytes`` bounds a file, or for JSONL a line.
    """
    name = relative_name(path, root)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        yield DocumentProblem(name, name, f"unsupported type {suffix or '(no suffix)'}")
        return
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            yield DocumentProblem(name, name, "not a regular file")
            return
        if suffix == ".jsonl":
            yield from _load_jsonl(path, name, max_bytes)
            return
        if info.st_size > max_bytes:
            yield DocumentProblem(name, name, _too_large(info.st_size, max_bytes))
            return
        with open(path, "rb") as file:
            # Read one byte past the limit: the file may have grown since stat.
            data = file.read(max_bytes + 1)
    except OSError as exc:
        yield DocumentProblem(name, name, f"unreadable: {os_reason(exc)}")
        return
    if len(data) > max_bytes:
        yield DocumentProblem(name, name, _too_large(len(data), max_bytes))
        return
    if suffix == ".pdf":
        yield _load_pdf(data, name)
        return
    try:
        text = _decode(data)
    except _Refused as refused:
        yield DocumentProblem(name, name, refused.reason)
        return
    title = None
    if suffix in (".html", ".htm"):
        text, title = html_text(text)
    elif suffix in (".md", ".markdown"):
        title = markdown_title(text)
    if not text.strip():
        yield DocumentProblem(name, name, "empty")
    else:
        yield Document(name, text, name, {"title": title} if title else {})


def load_all(
    paths: Sequence[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[list[Document], list[DocumentProblem]]:
    """:func:`discover` and :func:`load` everything; a repeated id is a problem.

    The first document with an id wins; each later one is reported with where the first
    came from. Problems come in the order met.
    """
    documents: list[Document] = []
    problems: list[DocumentProblem] = []
    first_source: dict[str, str] = {}
    for found in find(paths, include, exclude):
        if isinstance(found, DocumentProblem):
            problems.append(found)
            continue
        for item in load(found[0], root=found[1], max_bytes=max_bytes):
            if isinstance(item, DocumentProblem):
                problems.append(item)
            elif item.id in first_source:
                reason = f"duplicate id {item.id!r} (first in {first_source[item.id]})"
                problems.append(DocumentProblem(item.source, item.id, reason))
            else:
                first_source[item.id] = item.source
                documents.append(item)
    return documents, problems


# --- formats ---------------------------------------------------------------------------


class _Refused(Exception):
    """Bytes that are not a text we read; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _sniff(head: bytes) -> None:
    """Refuse binary files and UTF-16/32 (whose NUL bytes would look binary)."""
    if head.startswith(_UTF16_32_BOMS):
        raise _Refused("not valid UTF-8 (UTF-16/32 byte order mark)")
    if b"\x00" in head[:_SNIFF_BYTES]:
        raise _Refused("binary file")


def _decode(data: bytes) -> str:
    """UTF-8 text without its BOM; :class:`_Refused` for anything else."""
    _sniff(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Refused(f"not valid UTF-8 (bad byte at offset {exc.start})") from None


def _load_jsonl(path: Path, name: str, max_bytes: int) -> Iterator[Document | DocumentProblem]:
    """One document per line, streamed: a JSONL corpus may be far larger than one file."""
    with open(path, "rb") as file:
        try:
            _sniff(file.read(_SNIFF_BYTES))
        except _Refused as refused:
            yield DocumentProblem(name, None, refused.reason)
            return
        file.seek(0)
        any_line = False
        for number, raw in enumerate(_lines(file, max_bytes), start=1):
            source = f"{name}:{number}"
            if raw is None:
                yield DocumentProblem(source, None, f"line too large (> {_size(max_bytes)})")
                continue
            try:
                line = _decode(raw)
            except _Refused as refused:
                yield DocumentProblem(source, None, refused.reason)
                continue
            if line.strip():
                any_line = True
                yield _json_document(line, number, source)
        if not any_line:
            yield DocumentProblem(name, None, "empty")


def _lines(file: io.BufferedReader, max_bytes: int) -> Iterator[bytes | None]:
    """The file's lines without their ending; ``None`` for a line over ``max_bytes``."""
    # Reads stay bounded: a runaway line is skipped a MiB at a time, never held whole.
    while line := file.readline(max_bytes + 2):
        content = line.rstrip(b"\r\n")
        if len(content) <= max_bytes:
            yield content
            continue
        while not line.endswith(b"\n") and (line := file.readline(1 << 20)):
            pass
        yield None


def _json_document(line: str, number: int, source: str) -> Document | DocumentProblem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return DocumentProblem(source, None, f"bad JSON on line {number}: {exc.msg}")
    if not isinstance(record, dict):
        return DocumentProblem(source, None, "not a JSON object")
    raw_id, text, metadata = record.get("id"), record.get("text"), record.get("metadata") or {}
    if raw_id is None or raw_id == "":
        return DocumentProblem(source, None, "missing id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return DocumentProblem(source, None, "id must be a string or an integer")
    doc_id = str(raw_id)
    if not isinstance(text, str):
        reason = "missing text" if text is None else "text must be a string"
        return DocumentProblem(source, doc_id, reason)
    if not text.strip():
        return DocumentProblem(source, doc_id, "empty")
    if not isinstance(metadata, dict):
        return DocumentProblem(source, doc_id, "metadata must be an object")
    try:
        acl = read_acl(record.get("acl"))
    except InvalidRequest as exc:
        return DocumentProblem(source, doc_id, exc.message)
    return Document(doc_id, text, source, metadata, acl)


def read_acl(raw: object) -> tuple[str, ...]:
    """A document's ``"acl": {"read": [...]}``, checked; () for none."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or set(raw) - {"read"} or not isinstance(raw.get("read"), list):
        raise InvalidRequest('acl must be {"read": ["user:NAME", "group:NAME", ...]}', param="acl")
    entries = normalize_entries(raw["read"], "acl.read")
    return () if "*" in entries else entries


def _load_pdf(data: bytes, name: str) -> Document | DocumentProblem:
    if not data[:1024].lstrip().startswith(b"%PDF-"):
        return DocumentProblem(name, name, "not a PDF")
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            return DocumentProblem(name, name, "encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    # pypdf raises many kinds of exceptions on damaged files (its own, ValueError,
    # KeyError, struct.error...): any of them is this file's problem, not the batch's.
    except Exception as exc:  # noqa: BLE001
        return DocumentProblem(name, name, f"unreadable PDF: {os_reason(exc)}")
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        return DocumentProblem(name, name, "PDF has no text layer")
    metadata: dict[str, Any] = {"pages": len(pages)}
    if isinstance(title, str) and title.strip():
        metadata["title"] = title.strip()
    return Document(name, text, name, metadata)


# --- reasons ---------------------------------------------------------------------------


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} GiB"


def _too_large(size: int, limit: int) -> str:
    return f"too large ({_size(size)} > {_size(limit)})"
