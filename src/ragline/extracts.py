"""The extractive answer: the passages' own sentences that answer the question, cited.

A 135M-parameter model cannot know the documents; asked to write, it invents fluent
prose about them (docs/BENCHMARKS.md, the answer eval). It can be spared the writing:
the answer is the sentence of the retrieved passages that shares most of the question's
words (weighted by how rare each word is among the candidates, and helped by the
heading it sits under and the passage's rank), and the next one when the first is short
or goes on. Each sentence is cited as the passage it comes from, so every sentence of
the answer is one a reader finds in the cited source.

When the best passage is not relevant enough (its similarity to the question under
``abstain_below``, or no sentence shares a word with the question), the answer says so
plainly and names the closest source instead of answering from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .grounding import content_words, names, sentences, stem
from .models import Source
from .prose import plain

__all__ = ["Draft", "Extract", "Extractor"]

_DEFINED = re.compile(r"^(?:what|who)\s+(?:is|are|was|were)\s+(?:the |an? )?(.+?)\s*\??$", re.I)
_HEADING = re.compile(r"^(.{1,80}):$")  # prose.plain writes a heading as "Heading:"
_GOES_ON = re.compile(r"^(It|This|That|These|They|Its|Their|He|She|His|Her)\b")


@dataclass(frozen=True, slots=True)
class Extract:
    """An extractive answer: its text, and whether it abstained."""

    text: str
    abstained: bool = False


@dataclass(frozen=True, slots=True)
class Draft:
    """What an extractive answer is chosen from, once the sources may answer: the
    candidate sentences and the question's words with their weights."""

    question: str
    best: Source
    wanted: set[str]
    candidates: list[_Candidate]
    weight: dict[str, float]

    @property
    def sentences(self) -> list[str]:
        """The candidate sentences, in the order :meth:`Extractor.choose` reads
        ``closeness`` in."""
        return [c.text for c in self.candidates]


@dataclass(frozen=True, slots=True)
class _Candidate:
    rank: int  # the passage's number, as cited
    order: int  # the sentence's place in its passage
    text: str
    heading: str
    first: bool  # the first sentence under its heading


class Extractor:
    """Chooses an extractive answer from the sources the question retrieved.

    ``sentences`` bounds how many passage sentences the answer quotes, ``max_words`` its
    length; ``abstain_below`` is the cosine similarity under which the best source does
    not answer the question (``None``: never abstain on similarity); ``coverage`` the
    share of the question's words (weighted by rarity) the passages must have."""

    def __init__(
        self,
        *,
        sentences: int = 2,
        max_words: int = 60,
        passages: int = 4,
        abstain_below: float | None = None,
        coverage: float = 0.5,
        semantic: float = 0.5,
    ) -> None:
        self.coverage = coverage
        self.semantic = semantic
        self.sentences = sentences
        self.max_words = max_words
        self.passages = passages
        self.abstain_below = abstain_below

    def prepare(self, question: str, sources: Sequence[Source]) -> Extract | Draft:
        """The answer that says the documents do not cover ``question``, when they do not
        (see the module's docstring); else the :class:`Draft` to choose the quote from."""
        if not sources:
            return Extract("The documents do not cover this.", abstained=True)
        best = sources[0]
        if (
            self.abstain_below is not None
            and best.similarity is not None
            and max((s.similarity or 0.0) for s in sources) < self.abstain_below
        ):
            return self._abstain(best)
        # A question that names what no source mentions (Windows, Qdrant) is not answered
        # by them, however close they are otherwise.
        known = {w for s in sources for w in content_words(plain(s.text))}
        missing = sorted(n for n in names(question) if n not in known and f"{n}s" not in known)
        if missing:
            return self._abstain(best, missing)
        wanted = {stem(w) for w in content_words(question)}
        candidates = [c for s in sources[: self.passages] for c in _candidates(s, question)]
        if not wanted or not candidates:
            return self._abstain(best)
        weight = _weights(wanted, candidates)
        # Passages that share under half of the question's words, weighted by rarity (a
        # word no passage has weighs most), are about something else.
        known = {stem(w) for w in known}
        if sum(weight[w] for w in wanted & known) < self.coverage * sum(weight.values()):
            return self._abstain(best)
        return Draft(question, best, wanted, candidates, weight)

    def answer(
        self,
        question: str,
        sources: Sequence[Source],
        closeness: Sequence[float] | None = None,
    ) -> Extract:
        """The answer to ``question`` from ``sources`` (numbered as cited): :meth:`prepare`,
        then :meth:`choose`."""
        draft = self.prepare(question, sources)
        return draft if isinstance(draft, Extract) else self.choose(draft, closeness)

    def choose(self, draft: Draft, closeness: Sequence[float] | None = None) -> Extract:
        """The quote from ``draft``. ``closeness``, one figure per ``draft.sentences``
        (cosine similarity to the question), joins the choice: a sentence can answer in
        other words than the question's ("Who built it?" and "completed by the engineer
        Ada Brisk")."""
        question, best, wanted = draft.question, draft.best, draft.wanted
        candidates, weight = draft.candidates, draft.weight
        subject = _DEFINED.match(question.strip())
        defines = None
        if subject:  # "What is X?" is answered by "X is ...", wherever it stands
            defines = re.compile(
                rf"^(?:the |an? )?{re.escape(subject.group(1))}\s+(?:is|are|was|were)\b", re.I
            )
        lexical = [
            self._score(c, wanted, weight) * (2 if defines and defines.match(c.text) else 1)
            for c in candidates
        ]
        top = max(lexical) or 1.0
        if closeness is not None and len(closeness) == len(candidates):
            # Both on one scale: the word match relative to the best one, and the cosine
            # above what unrelated sentences score (about 0.2 with MiniLM).
            lexical = [
                (x / top if x > 0 else 0.0) + self.semantic * max(0.0, cos - 0.2)
                for x, cos in zip(lexical, closeness, strict=True)
            ]
        scored = sorted(
            zip(lexical, candidates, strict=True), key=lambda sc: (-sc[0], sc[1].rank, sc[1].order)
        )
        score, first = scored[0]
        if score <= 0:
            return self._abstain(best)
        # Then, from the same passage, the sentence that adds most: the question's words
        # not yet found, and (measured) its closeness to the question; short of any, the
        # one that goes on from the best ("It was completed in 1912 by ..." after "The
        # bridge ..."). Two sentences at most, within ``max_words``.
        chosen = [first]
        covered = wanted & _words(first)
        words = len(first.text.split())
        close = dict(zip((id(c) for c in candidates), closeness or [], strict=False))
        near = [
            c
            for c in candidates
            if c.rank == first.rank
            and c is not first
            and words + len(c.text.split()) <= self.max_words
        ]
        while len(chosen) < self.sentences and near:
            gain, pick = max(
                ((sum(weight[w] for w in (wanted & _words(c)) - covered), c) for c in near),
                key=lambda g: (g[0], -abs(g[1].order - first.order)),
            )
            if gain <= 0:
                following = [c for c in near if c.order == first.order + 1]
                closest = max(near, key=lambda c: close.get(id(c), 0.0))
                if following and _GOES_ON.match(following[0].text):
                    pick = following[0]  # "It ...": it says more of the same thing
                elif close.get(id(closest), 0.0) > 0.3:
                    pick = closest  # in other words: "called the Grey Tern" for "name"
                elif following:
                    pick = following[0]
                else:
                    break
            chosen.append(pick)
            covered |= wanted & _words(pick)
            words += len(pick.text.split())
            near = [
                c for c in near if c is not pick and words + len(c.text.split()) <= self.max_words
            ]
        chosen.sort(key=lambda c: c.order)
        return Extract(_cite(" ".join(_trim(c.text, self.max_words) for c in chosen), first.rank))

    def _score(self, c: _Candidate, wanted: set[str], weight: dict[str, float]) -> float:
        own = _words(c)
        heading = {stem(w) for w in content_words(c.heading)}
        found = sum(weight[w] for w in wanted & own)
        # A section's heading speaks for its sentences, and most for its first one ("What
        # is ragline?" is answered by the first sentence under "ragline").
        found += (1.0 if c.first else 0.5) * sum(weight[w] for w in (wanted & heading) - own)
        if found == 0:
            return 0.0
        # A short fragment says little; a passage ranked lower is less likely the answer.
        length = min(len(own), 8) / 8
        return found * (0.6 + 0.4 * length) / (1 + 0.15 * (c.rank - 1))

    def _abstain(self, closest: Source, missing: Sequence[str] = ()) -> Extract:
        name = closest.title or closest.source
        what = f"do not mention {', '.join(missing)}" if missing else "do not cover this"
        return Extract(
            f"The documents {what}; the closest source is {name} [{closest.rank}].",
            abstained=True,
        )


def _candidates(source: Source, question: str) -> list[_Candidate]:
    """The sentences of a source's prose (its code left out), each with the heading it
    sits under; a sentence that only repeats the question is no answer to it."""
    out: list[_Candidate] = []
    heading, first = "", True
    echo = _flat(question)
    for line in plain(source.text, code_lines=0).split("\n"):
        line = line.strip()
        if not line:
            continue
        if match := _HEADING.match(line):
            heading, first = match.group(1), True
            continue
        for a, b in sentences(line):
            text = line[a:b].strip()
            if len(text.split()) < 4 or text.endswith(":"):
                continue
            if echo and echo in _flat(text):
                continue  # it quotes the question (an example of asking it)
            out.append(_Candidate(source.rank or 1, len(out), text, heading, first))
            first = False
    return out


def _flat(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _words(c: _Candidate) -> set[str]:
    return {stem(w) for w in content_words(c.text)}


def _weights(wanted: set[str], candidates: Sequence[_Candidate]) -> dict[str, float]:
    """Inverse document frequency of each question word over the candidate sentences:
    "ragline", in every sentence of its docs, weighs little beside "SIGTERM"."""
    n = len(candidates)
    counts = dict.fromkeys(wanted, 0)
    for c in candidates:
        for w in wanted & {stem(x) for x in content_words(f"{c.heading} {c.text}")}:
            counts[w] += 1
    return {w: math.log(1 + n / (1 + counts[w])) for w in wanted}


def _trim(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " …"


def _cite(text: str, rank: int) -> str:
    """The quote with its citation before its final full stop."""
    text = text.rstrip()
    marker = f" [{rank}]"
    if text.endswith((".", "!", "?")):
        return text[:-1] + marker + text[-1]
    return text + marker + "."
