"""Markdown and HTML as prose a small model can read, and the titles of passages.

A 135M-parameter model given raw Markdown copies its syntax back, or loops on it: table
rules, link targets, code fences and front matter are noise to it. The prompt composer
passes each retrieved passage through :func:`plain` (the index keeps the original text,
so search and citations are unchanged).
"""

from __future__ import annotations

import html
import re
from pathlib import PurePath

__all__ = ["plain", "title"]

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


def plain(text: str) -> str:
    """``text`` (Markdown, HTML or plain) with its markup turned into prose."""
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
                out.extend([*fence[:_CODE_LINES], ""])
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
        out.extend(fence[:_CODE_LINES])
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
