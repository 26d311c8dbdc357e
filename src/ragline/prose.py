"""Markdown and HTML as prose a small model can read, and the titles of passages.

A 135M-parameter model given raw Markdown copies its syntax back, or loops on it: table
rules, link targets, code fences and front matter are noise to it. The prompt composer
passes each retrieved passage through :func:`plain` (the index keeps the original text,
so search and citations are unchanged).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import PurePath

__all__ = ["html_text", "markdown_title", "plain", "title"]

_FRONT_MATTER = re.compile(r"\A---\n.*?\n(?:---|\.\.\.)\n", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)|\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>]+)>")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s+\S+.*$", re.M)
_EMPHASIS = re.compile(
    r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1|(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\3(?![\w*])"
)
_CODE = re.compile(r"`+([^`]+)`+")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s*([-*_=])(\s*\1){2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_BLOCK = re.compile(r"^\s*([-*+]\s|\d+[.)]\s)")  # a list item starts its own line
_CODE_LINES = 4  # a long code block is cut to its first lines: the model reads prose


def plain(text: str, *, code_lines: int = _CODE_LINES) -> str:
    """``text`` (Markdown, HTML or plain) with its markup turned into prose; a fenced code
    block keeps its first ``code_lines`` lines."""
    text = _FRONT_MATTER.sub("", text.replace("\r\n", "\n"))
    text = _AUTOLINK.sub(lambda m: m.group(1), _COMMENT.sub("", text))
    if _TAG.search(text):
        text = html.unescape(_TAG.sub(" ", text))
    out: list[str] = []
    header: list[str] | None = None
    fence: list[str] | None = None
    for line in text.split("\n"):
        if _FENCE.match(line):
            if fence is None:
                fence = []
            else:
                out.extend([*fence[:code_lines], ""])
                fence = None
            continue
        if fence is not None:
            if line.strip():
                fence.append(line.strip())
            continue
        if line.lstrip().startswith("|"):
            cells = [_inline(cell.strip()) for cell in line.strip().strip("|").split("|")]
            if _TABLE_RULE.match(line):
                continue
            if header is None:
                header = cells
                continue
            out.extend([_row(header, cells), ""])
            continue
        header = None
        if _RULE.match(line) or _REFERENCE.match(line):
            continue
        heading = _HEADING.match(line)
        if heading:
            out.extend(["", _inline(heading.group(1)).rstrip(".:") + ":"])
            continue
        line = _inline(line.lstrip("> ") if line.lstrip().startswith(">") else line)
        if out and out[-1] and line and not _BLOCK.match(line) and not out[-1].endswith(":"):
            out[-1] += " " + line.lstrip()  # a hard-wrapped paragraph is one line
        else:
            out.append(line)
    if fence:
        out.extend(fence[:code_lines])
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _inline(text: str) -> str:
    text = _IMAGE.sub(lambda m: m.group(1), text)
    text = _LINK.sub(lambda m: m.group(1) or m.group(2), text)
    text = _CODE.sub(lambda m: m.group(1), text)
    for _ in range(2):  # **bold *inside* bold**
        text = _EMPHASIS.sub(lambda m: m.group(2) or m.group(4), text)
    return re.sub(r"[ \t]+", " ", text).rstrip()


def _row(header: list[str], cells: list[str]) -> str:
    # A table row as a sentence: "route: POST /api/v1/ingest; what: JSON documents."
    pairs = [
        f"{name}: {cell}" if name else cell
        for name, cell in zip(header + [""] * len(cells), cells, strict=False)
        if cell
    ]
    sentence = "; ".join(pairs)
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


def title(text: str, source: str) -> str:
    """A passage's title for a reader: its file name, and the first heading in it."""
    name = PurePath(source).name or source
    for line in text.split("\n"):
        heading = _HEADING.match(line.strip())
        if heading:
            return f"{name}: {_inline(heading.group(1))}"
    return name


# --- a file's text and title (ingestion) -------------------------------------------

_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")


def markdown_title(text: str) -> str | None:
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


def html_text(html: str) -> tuple[str, str | None]:
    """An HTML page's visible text, with paragraph breaks, and its title."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    text = re.sub(r"\n{3,}", "\n\n", "".join(parser.parts)).lstrip("\n").rstrip()
    title = " ".join("".join(parser.title).split())
    return text, title or None
