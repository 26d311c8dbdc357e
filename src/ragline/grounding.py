"""Grounding: whether each sentence of an answer says only what its passages say.

One measure serves the answer eval (``bench/answers.py``, validated there against a
hand-labelled set) and the grounding guard that stops a generation drifting away from
its sources. It is lexical, so it costs microseconds per sentence and needs no model: a
sentence is *supported* when what it claims is in the passages, which is read as

- every number and code-like word of the sentence (``503``, ``RAGLINE_X``) occurs in the
  passages (or the question): a changed figure is the commonest invention;
- and most of its content words do: at most ``tolerance`` of them (a share, 0.4) are new.

Words are compared by their first five letters ("cancelled" and "cancellation"), the
question's words count as known (restating the question claims nothing), and a sentence
with fewer than ``min_words`` content words, or one that says the passages do not have
the answer, is neither supported nor unsupported: it is not judged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .prose import plain

__all__ = [
    "Drift",
    "Grounding",
    "GroundingGuard",
    "Judgement",
    "Verdict",
    "abstains",
    "content_words",
    "names",
    "sentences",
    "stem",
]

_WORD = re.compile(r"[a-z0-9_]+(?:[.'][a-z0-9_]+)*")
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_ENUMERATOR = re.compile(r"^\W*(?:\d{1,3}[.)]|[-*+•])(?=\s|$)\s*")
# A sentence ends at . ! ? (and what closes it) before a space, or at a line break.
_END = re.compile(r"(?<=[.!?])[\"')\]]*(?=\s)|\n+")
_STOPWORDS = frozenset(
    """
    a about above after again all also an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its
    itself just let may me might more most must my no nor not now of off on once only or
    other our out over own same shall she should so some such than that the their them
    then there these they this those through to too under until up upon us very was we
    were what when where which while who whom why will with would yes yet you your one
    two also use used using like well get gets make makes way many much often long come
    comes kind sort type name named called happen happens happened thing things
    """.split()  # noqa: SIM905
)
# What an answer says when the passages lack the answer: not a claim to check.
_ABSTAINING = re.compile(
    r"\b(do(?:es)? not (?:know|cover|say|contain|mention)|(?:don't|doesn't) (?:know|cover|"
    r"say|contain|mention)|not (?:covered|mentioned|in the (?:context|documents|passages))|"
    r"no information|cannot (?:answer|find))\b",
    re.I,
)


def abstains(text: str) -> bool:
    """Whether ``text`` says the passages lack the answer ("I do not know", "the documents
    do not cover this")."""
    return _ABSTAINING.search(text) is not None


class Verdict(StrEnum):
    """What the measure says of one sentence."""

    SUPPORTED = "supported"
    UNSUPPORTED = "unsupported"
    UNJUDGED = "unjudged"  # too short to claim anything, or an abstention


_SUFFIXES = ("ations", "ation", "ings", "ing", "edly", "ed", "es", "s", "ly")
# Number words are figures too: "ten" for "two" is an invention, not a paraphrase.
_DIGITS = {
    word: str(n)
    for n, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()  # noqa: SIM905
    )
}
_NUMBERS = frozenset(
    list(_DIGITS)[2:]
    + "twenty thirty forty fifty hundred thousand million billion".split()  # noqa: SIM905
    + "twice thrice half double triple".split()  # noqa: SIM905
)


def stem(word: str) -> str:
    """A light stem: "stopped", "stops" and "stop" agree, so do "cancelled" and
    "cancellation" (five letters at most)."""
    if _exact(word):
        return word
    if word.endswith("ies") and len(word) > 4:
        return (word[:-3] + "y")[:5]  # "studies" is "study"
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "es" and not word.endswith(("ses", "xes", "zes", "ches", "shes")):
                suffix = "s"  # "takes" is "take", "passes" is "pass"
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]
    return word[:5]


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its meaning: lowercased, without stopwords and
    citation markers, number words as digits."""
    words = _WORD.findall(_CITATION.sub(" ", text.lower()))
    words = [_DIGITS.get(w, w) if w in _NUMBERS else w for w in words]  # "five" is "5"
    return [w for w in words if w not in _STOPWORDS and (len(w) > 2 or w.isdigit())]


_NAME = re.compile(
    r"(?<![.!?:]\s)(?<!^)\b[A-Z][a-z]+\b|\b[A-Z]{2,}[A-Za-z0-9]*\b|\b[A-Z][a-z]+[A-Z][A-Za-z0-9]*\b"
)


def names(sentence: str) -> set[str]:
    """The sentence's names: capitalised words not first in it, and acronyms."""
    body = _CITATION.sub(" ", sentence).lstrip("-*•> \t")
    return {m.group(0).lower() for m in _NAME.finditer(body)} - _STOPWORDS


def _exact(word: str) -> bool:
    """A number or a code-like word: it must occur as written."""
    return any(c.isdigit() for c in word) or "_" in word or word in _NUMBERS


def sentences(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each sentence of ``text``, stripped, in order."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _END.finditer(text):
        _add(spans, text, start, match.end())
        start = match.end()
    _add(spans, text, start, len(text))
    return spans


def _add(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        at = start + piece.index(stripped)
        spans.append((at, at + len(stripped)))


@dataclass(frozen=True, slots=True)
class Judgement:
    """One sentence judged: the verdict, and the words that no passage has."""

    verdict: Verdict
    novel: tuple[str, ...] = ()


class Grounding:
    """The passages an answer may draw on, and the measure that checks a sentence
    against them. ``passages`` may be Markdown or HTML: they are read as prose."""

    def __init__(
        self,
        passages: Iterable[str],
        question: str = "",
        *,
        tolerance: float = 0.4,
        min_words: int = 3,
    ) -> None:
        self.tolerance = tolerance
        self.min_words = min_words
        self._words: set[str] = set()
        self._exact: set[str] = set()
        for text in [*passages, question]:
            # The raw text too: a code span's words are in it as written.
            for word in content_words(plain(text)) + content_words(text):
                self._words.add(stem(word))
                self._exact.add(word)

    def judge(self, sentence: str) -> Judgement:
        """Whether ``sentence`` says only what the passages say."""
        # A list's numbering ("1.", "2)") and bullets are layout, not claims.
        sentence = _ENUMERATOR.sub("", sentence)
        words = content_words(sentence)
        named = names(sentence)
        novel = tuple(
            w
            for w in words
            if (w not in self._exact if _exact(w) or w in named else stem(w) not in self._words)
        )
        if any(_exact(w) or w in named for w in novel):
            return Judgement(Verdict.UNSUPPORTED, novel)  # a figure or name the passages lack
        if len(words) < self.min_words or _ABSTAINING.search(sentence):
            return Judgement(Verdict.UNJUDGED)
        if len(novel) > self.tolerance * len(words):
            return Judgement(Verdict.UNSUPPORTED, novel)
        return Judgement(Verdict.SUPPORTED, novel)

    def judge_all(self, text: str) -> list[tuple[str, Judgement]]:
        """Every sentence of ``text`` with its judgement."""
        return [(text[a:b], self.judge(text[a:b])) for a, b in sentences(text)]


@dataclass(frozen=True, slots=True)
class Drift:
    """Where an answer left its sources: the sentence no passage supports, and the
    offset (in characters of the whole text) where it begins; the text before it is the
    answer to keep."""

    sentence: str
    keep: int
    novel: tuple[str, ...]


class GroundingGuard:
    """Reads a generation as it streams and says when it has drifted: once ``limit``
    sentences are unsupported. A sentence is judged when it ends (at its full stop, or at
    :meth:`finish`), so a guard never cuts a sentence it has not read whole."""

    def __init__(self, grounding: Grounding, *, limit: int = 1) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.grounding = grounding
        self.limit = limit
        self.drift: Drift | None = None
        self.unsupported = 0
        self._text = ""
        self._start = 0  # where the sentence being written begins

    def feed(self, piece: str) -> Drift | None:
        """Add streamed text; the :class:`Drift` once the answer has drifted."""
        if self.drift is not None:
            return self.drift
        self._text += piece
        for match in _END.finditer(self._text, self._start):
            if self.drift is not None or match.end() >= len(self._text):
                break  # a line break may go on
            if match.end() > self._start:
                self._check(self._start, match.end())
                self._start = match.end()
        return self.drift

    def finish(self) -> Drift | None:
        """The generation ended: judge its last sentence."""
        if self.drift is None and self._start < len(self._text):
            self._check(self._start, len(self._text))
            self._start = len(self._text)
        return self.drift

    def _check(self, start: int, end: int) -> None:
        spans = sentences(self._text[start:end])
        for a, b in spans:
            sentence = self._text[start + a : start + b]
            judgement = self.grounding.judge(sentence)
            if judgement.verdict is Verdict.UNSUPPORTED:
                self.unsupported += 1
                if self.unsupported >= self.limit:
                    self.drift = Drift(sentence, start + a, judgement.novel)
                    return
