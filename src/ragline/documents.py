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
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUFFIXES",
    "Document",
    "DocumentProblem",
    "discover",
    "load",
    "load_all",
]

SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl"})
"""File suffixes :func:`load` reads (compared case-insensitively)."""

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""The largest file :func:`load` reads by default (for JSONL: the largest line)."""
_SNIFF_BYTES = 8192
_UTF16_32_BOMS = (
    codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
)


@dataclass(frozen=True)
class Document:
    """A document's text and where it came from; ``metadata`` is read-only."""

    id: str
    text: str
    source: str
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # A frozen dataclass still hands out its dict: copy it behind a read-only view.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@dataclass(frozen=True)
class DocumentProblem:
    """Why a file, or one line of a JSONL file, gave no document."""

    source: str
    document_id: str | None
    reason: str


def discover(
    paths: Sequence[str | Path], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Iterator[Path]:
    """Files to load: each path given as a file, and the files under each directory.

    A directory is walked recursively in sorted order. A file under it is kept when its path
    relative to that directory matches one of ``include`` (default: the supported
    suffixes) and none of ``exclude``. Globs: ``*`` and ``?`` stay within a path segment,
    ``**`` spans segments (``**/drafts/**``), and a glob without ``/`` matches the file
    name at any depth (``*.tmp``). Hidden names (``.x``) are skipped unless given. Symlinked
    directories are not followed (the real one is walked if it is under the root); a
    symlinked file is kept only if it resolves under the root. A file reached twice is
    yielded once. Given paths are yielded even when missing: :func:`load` reports them.
    """
    for found in _discover(paths, include, exclude):
        if isinstance(found, tuple):
            yield found[0]


def load(
    path: Path, *, root: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Document | DocumentProblem]:
    """The documents in ``path`` and the problems met, chosen by its suffix.

    A document's id and source are ``path`` relative to ``root`` with ``/`` separators (the
    file name without a root); a JSONL line's source is ``"name.jsonl:LINE"`` and its id
    comes from the line. ``max_bytes`` bounds a file, or for JSONL a line.
    """
    name = _relative(path, root)
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
        yield DocumentProblem(name, name, f"unreadable: {_reason(exc)}")
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
        text, title = _html_text(text)
    elif suffix in (".md", ".markdown"):
        title = _markdown_title(text)
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
    for found in _discover(paths, include, exclude):
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


# --- discovery -------------------------------------------------------------------------


def _discover(
    paths: Sequence[str | Path], include: Sequence[str], exclude: Sequence[str]
) -> Iterator[tuple[Path, Path | None] | DocumentProblem]:
    """(file, root) pairs to load, and the directories that could not be listed."""
    includes = [_glob(p) for p in include]
    excludes = [_glob(p) for p in exclude]
    seen: set[str] = set()

    def keep(relative: str) -> bool:
        if includes:
            wanted = any(_matches(g, relative) for g in includes)
        else:
            wanted = Path(relative).suffix.lower() in SUFFIXES
        return wanted and not any(_matches(g, relative) for g in excludes)

    def once(path: Path) -> bool:
        real = os.path.realpath(path)
        if real in seen:
            return False
        seen.add(real)
        return True

    for given in map(Path, paths):
        if not given.is_dir():
            if once(given):
                yield given, None
            continue
        real_root = Path(os.path.realpath(given))
        for item in _walk(given, given):
            if isinstance(item, DocumentProblem):
                yield item
                continue
            relative = item.relative_to(given).as_posix()
            if not keep(relative):
                continue
            # realpath, unlike Path.resolve in 3.11, returns on a symlink loop.
            if item.is_symlink() and not Path(os.path.realpath(item)).is_relative_to(real_root):
                continue
            if once(item):
                yield item, given


def _walk(directory: Path, root: Path) -> Iterator[Path | DocumentProblem]:
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        where = _relative(directory, root) if directory != root else str(directory)
        yield DocumentProblem(where, None, f"unreadable directory: {_reason(exc)}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = directory / entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            linked_dir = not is_dir and entry.is_symlink() and entry.is_dir()
        except OSError:
            is_dir = linked_dir = False
        if is_dir:
            yield from _walk(path, root)
        elif not linked_dir:
            yield path


def _glob(pattern: str) -> tuple[re.Pattern[str], bool]:
    """A glob as a regex, and whether it matches the file name only (no ``/`` in it)."""
    pattern = pattern.lstrip("/")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : close]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out)), "/" not in pattern


def _matches(glob: tuple[re.Pattern[str], bool], relative: str) -> bool:
    regex, name_only = glob
    return regex.fullmatch(relative.rsplit("/", 1)[-1] if name_only else relative) is not None


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
    return Document(doc_id, text, source, metadata)


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
        return DocumentProblem(name, name, f"unreadable PDF: {_reason(exc)}")
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        return DocumentProblem(name, name, "PDF has no text layer")
    metadata: dict[str, Any] = {"pages": len(pages)}
    if isinstance(title, str) and title.strip():
        metadata["title"] = title.strip()
    return Document(name, text, name, metadata)


_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")


def _markdown_title(text: str) -> str | None:
    """The first level-1 heading outside code fences (``# Title`` or ``Title\\n===``)."""
    fenced, previous = False, ""
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced, previous = not fenced, ""
            continue
        if not fenced:
            if heading := _ATX_H1.match(line):
                return heading.group(1).strip()
            if previous.strip() and _SETEXT_H1.match(line):
                return previous.strip()
        previous = line
    return None


_HIDDEN = frozenset({"head", "script", "style", "template", "noscript", "title"})
# Elements that start a new paragraph of visible text.
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
    "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table",
    "td", "th", "tr", "ul",
})  # fmt: skip


class _VisibleText(HTMLParser):
    """Collects an HTML page's visible text with paragraph breaks, and its title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.hidden: list[str] = []
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and "head" in self.hidden:
            self.hidden.remove("head")  # an unclosed <head> ends where <body> starts
        if tag in _HIDDEN:
            self.hidden.append(tag)
        elif tag == "br":
            self._break("\n")
        elif tag in _BLOCKS:
            self._break("\n\n")
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.hidden:
            del self.hidden[len(self.hidden) - 1 - self.hidden[::-1].index(tag)]
        elif tag in _BLOCKS:
            self._break("\n\n")
        if tag == "pre" and self.pre:
            self.pre -= 1

    def handle_data(self, data: str) -> None:
        if self.hidden:
            if self.hidden[-1] == "title":
                self.title.append(data)
        elif self.pre:
            self.parts.append(data)
        else:
            # Source whitespace shows as one space, and none at the start of a line.
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith(("\n", " ")):
                data = data.lstrip(" ")
            self.parts.append(data)

    def _break(self, newlines: str) -> None:
        if self.parts:
            self.parts[-1] = self.parts[-1].rstrip(" ")
        self.parts.append(newlines)


def _html_text(html: str) -> tuple[str, str | None]:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    text = re.sub(r"\n{3,}", "\n\n", "".join(parser.parts)).lstrip("\n").rstrip()
    title = " ".join("".join(parser.title).split())
    return text, title or None


# --- reasons ---------------------------------------------------------------------------


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def _reason(exc: BaseException) -> str:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} GiB"


def _too_large(size: int, limit: int) -> str:
    return f"too large ({_size(size)} > {_size(limit)})"
