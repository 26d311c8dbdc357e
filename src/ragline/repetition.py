"""The degeneration guard: notices a generation that has started to repeat itself.

Small models (and large ones, now and then) fall into loops: the same sentence or the
same run of words, again and again, until ``max_tokens``. Nobody wants those tokens, so a
loop is a reason for work to stop, like a departed client. The guard reads the text as
it streams, from any generator, and says where the loop began, so that the answer keeps
the first copy and loses the repeats.

Three rules, all exact (no fuzzy matching, so a numbered list, a table, or a count from 1
to 20 never trips them: their items differ):

- ``repeated_span``: the latest words are one run of words repeated back to back, at
  least ``copies`` times and over at least ``min_span`` words ("The answer is: [1]. The
  answer is: [1]. The answer is: [1]."). A run of punctuation alone needs twice the
  span: a table rule (``|---|---|``) is not a loop, a page of ``#`` is.
- ``repeated_sentence``: a sentence or line of at least ``min_sentence`` tokens, three of
  them words of letters ("The answer is:"), occurs for the third time, wherever the copies
  are (a list that numbers its copies is still a loop).
- ``repeated_passage``: ``echo`` tokens in a row (16) that the text has written before,
  anywhere: a long sentence written again with other words around it.

The cost is a few microseconds per word: only the periods at which the newest word
repeats an earlier one are looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Loop", "RepetitionGuard"]

# Words, and runs of one punctuation mark, lowercased: "[1]." is four tokens, "---" one.
_TOKEN = re.compile(r"\w+|([^\w\s])\1*|\n")
_SENTENCE_END = frozenset(".!?")


@dataclass(frozen=True, slots=True)
class Loop:
    """A loop found in the text: the rule that fired, and the offset (in characters of
    the whole text seen) where the repeats begin; the text before it is the answer."""

    rule: str
    keep: int


class RepetitionGuard:
    """Feed it text with :meth:`feed`; it returns a :class:`Loop` once the text loops."""

    def __init__(
        self,
        *,
        copies: int = 3,
        min_span: int = 24,
        max_period: int = 64,
        min_sentence: int = 4,
        echo: int = 16,
    ) -> None:
        if copies < 2 or min_span < 2 or max_period < 1:
            raise ValueError("copies and min_span must be at least 2, max_period at least 1")
        self.copies = copies
        self.min_span = min_span
        self.max_period = max_period
        self.min_sentence = min_sentence
        self.echo = echo
        self.loop: Loop | None = None
        self._seen = 0  # characters fed so far
        self._pending = ""  # a trailing word that may continue in the next piece
        self._tokens: list[str] = []
        self._ends: list[int] = []  # each token's end offset in the whole text
        self._wordy: list[bool] = []  # whether the token is a word (not punctuation)
        # For each period p: how many tokens in a row equal the token p before them, and
        # the index of the last of them.
        self._runs: dict[int, tuple[int, int]] = {}
        self._last: dict[str, list[int]] = {}  # where each token occurred lately
        self._sentence: list[str] = []
        self._sentence_start = 0
        self._sentences: dict[tuple[str, ...], list[int]] = {}
        self._starts: list[int] = []  # each token's start offset
        self._grams: dict[tuple[str, ...], int] = {}  # each echo-long run: where it began

    def feed(self, text: str) -> Loop | None:
        """Read the next piece of text; the loop, once there is one."""
        if self.loop is not None or not text:
            return self.loop
        start = self._seen - len(self._pending)
        buffer = self._pending + text
        self._seen += len(text)
        # The last token may go on in the next piece ("repe" + "ating"): keep it back
        # unless whitespace follows it.
        cut = len(buffer)
        if buffer[-1:].isalnum() or buffer[-1:] == "_":
            match = re.search(r"\w+$", buffer)
            cut = match.start() if match else cut
        self._pending = buffer[cut:]
        for match in _TOKEN.finditer(buffer, 0, cut):
            self.loop = self._token(
                match.group().lower(), start + match.start(), start + match.end()
            )
            if self.loop is not None:
                break
        return self.loop

    def finish(self) -> Loop | None:
        """The text has ended: read the word held back."""
        if self._pending and self.loop is None:
            pending, self._pending = self._pending, ""
            start = self._seen - len(pending)
            self.loop = self._token(pending.lower(), start, self._seen)
        return self.loop

    def _token(self, token: str, begin: int, end: int) -> Loop | None:
        if token == "\n":  # a line ends a sentence, and is no word of a repeated span
            return self._close_sentence() if self._sentence else None
        n = len(self._tokens)  # this token's index
        wordy = token[0].isalnum() or token[0] == "_"
        self._tokens.append(token)
        self._starts.append(begin)
        self._ends.append(end)
        self._wordy.append(wordy)
        # Only periods at which this token repeats an earlier one can go on; every other
        # run is over (it was not extended at n). The shortest period found wins.
        earlier = self._last.setdefault(token, [])
        while earlier and n - earlier[0] > self.max_period:
            earlier.pop(0)
        found: Loop | None = None
        for j in reversed(earlier):
            period = n - j
            run = self._runs.get(period, (0, -2))
            length = run[0] + 1 if run[1] == n - 1 else 1
            self._runs[period] = (length, n)
            if (
                found is None
                and length >= (self.copies - 1) * period
                and length + period >= self.min_span
            ):
                found = self._periodic(period, length)
        earlier.append(n)
        if found is not None:
            return found
        return self._echo(n) or self._sentence_token(token, begin)

    def _echo(self, n: int) -> Loop | None:
        """The text repeats ``echo`` tokens it wrote before, anywhere: a model copying
        itself (a long sentence again, with other words around it)."""
        first = n + 1 - self.echo
        if first < 0:
            return None
        gram = tuple(self._tokens[first:])
        seen = self._grams.setdefault(gram, first)
        if seen + self.echo > first or not any(self._wordy[first:]):
            return None  # this run itself, an overlapping (periodic) one, or punctuation
        # Keep the text up to the sentence (or line) in which the copy began.
        begin = self._starts[first]
        keep = self._sentence_start if self._sentence and self._sentence_start <= begin else begin
        self.loop = Loop("repeated_passage", keep)
        return self.loop

    def _periodic(self, period: int, run: int) -> Loop | None:
        n = len(self._tokens)
        first = n - run - period  # the first copy is tokens[first : first + period]
        if not any(self._wordy[first : first + period]) and run + period < 2 * self.min_span:
            return None  # punctuation alone, as in a table rule: only a long run counts
        return Loop("repeated_span", self._ends[first + period - 1])

    def _sentence_token(self, token: str, begin: int) -> Loop | None:
        if not self._sentence:
            self._sentence_start = begin
        self._sentence.append(token)
        return self._close_sentence() if token in _SENTENCE_END else None

    def _close_sentence(self) -> Loop | None:
        words = tuple(self._sentence)
        start = self._sentence_start
        self._sentence = []
        letters = sum(1 for w in words if w.isalpha())
        if len(words) < self.min_sentence or letters < 3:
            return None
        starts = self._sentences.setdefault(words, [])
        starts.append(start)
        if len(starts) >= 3:
            self.loop = Loop("repeated_sentence", starts[1])
            return self.loop
        return None
