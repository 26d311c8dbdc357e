"""The default prompt composer: system instructions, numbered passages, the query."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal

from ..lifetime import Lifetime
from ..models import ChatRequest, Hit, Message, Prompt
from ..prose import plain, title

__all__ = ["DEFAULT_INSTRUCTIONS", "ContextPromptComposer", "rough_tokens"]

DEFAULT_INSTRUCTIONS = (
    "You are a helpful assistant. Answer the question using the numbered context when it "
    "is relevant, cite it as [n], and say so when the context does not contain the answer."
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9_]+")
# Words that say nothing about what a question is after.
_STOPWORDS_TEXT = (
    "a an and are as at be by can do does for from has have how i if in is it its of on "
    "or the this that to was what when where which who why will with you your"
)
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split(" "))


def rough_tokens(text: str) -> int:
    """About four characters per token of English text: for when no tokenizer is at hand."""
    return (len(text) + 3) // 4


class ContextPromptComposer:
    """Puts the retrieved passages, as prose (:func:`ragline.prose.plain`), numbered as
    the sources are, into the last user message.

    ``context_tokens`` bounds the passages in tokens of ``count_tokens`` (the model's own
    tokenizer where there is one); ``max_passages`` bounds their number: a small model
    answers better from fewer, shorter passages. A passage that does not fit whole is cut
    at a sentence boundary.
    """

    def __init__(
        self,
        *,
        context_tokens: int = 3_000,
        max_passages: int | None = None,
        count_tokens: Callable[[str], int] = rough_tokens,
        instructions: str = DEFAULT_INSTRUCTIONS,
        focus: bool = False,
        placement: Literal["user", "system"] = "user",
    ) -> None:
        self.context_tokens = context_tokens
        self.max_passages = max_passages
        self.count_tokens = count_tokens
        self.instructions = instructions
        self.focus = focus
        self.placement = placement

    async def compose(
        self, request: ChatRequest, hits: Sequence[Hit], lifetime: Lifetime
    ) -> Prompt:
        await lifetime.checkpoint()
        instructions = request.system_instructions or self.instructions
        messages = [m for m in request.history if m.role == "system"]
        if not messages:
            messages = [Message(role="system", content=instructions)]
        elif request.system_instructions:
            messages.append(Message(role="system", content=request.system_instructions))
        blocks = self.passages(hits, request.query)
        context = "Context:\n" + "\n\n".join(blocks) if blocks else ""
        if context and self.placement == "system":
            # A small model continues a list it sees at the end of the user's message
            # ("[4] ..."); as part of its instructions it reads the passages as given.
            last = messages[-1]
            messages[-1] = last.model_copy(update={"content": f"{last.content}\n\n{context}"})
            question = request.query
        else:
            question = f"{context}\n\nQuestion: {request.query}" if context else request.query
        messages.extend(m for m in request.history if m.role != "system")
        messages.append(Message(role="user", content=question))
        return Prompt(
            tuple(messages), request.max_tokens, request.temperature, passages=len(blocks)
        )

    def passages(self, hits: Sequence[Hit], query: str = "") -> list[str]:
        """The numbered passages that fit the budget, best first. With ``focus``, each
        passage is cut down to its sentences that share most words with ``query``, so
        that several passages fit, each with its point."""
        blocks: list[str] = []
        budget = self.context_tokens
        hits = hits[: self.max_passages]
        share = budget // max(len(hits), 1)
        for n, hit in enumerate(hits, start=1):
            head = f"[{n}] {title(hit.text, hit.source)}"
            text = plain(hit.text)
            if self.focus:
                text = self._focus(text, query, share - self.count_tokens(head) - 2)
            text = self._fit(text, budget - self.count_tokens(head) - 2)
            if not text:
                break
            block = f"{head}\n{text}"
            blocks.append(block)
            budget -= self.count_tokens(block) + 2
        return blocks

    def _focus(self, text: str, query: str, budget: int) -> str:
        """The sentences of ``text`` that share most words with ``query``, in their own
        order, within ``budget`` tokens; the first sentences when none shares a word."""
        wanted = _stems(query)
        sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
        scored = sorted(
            range(len(sentences)),
            key=lambda i: (-len(wanted & _stems(sentences[i])), i),
        )
        chosen: set[int] = set()
        used = 0
        for i in scored:
            cost = self.count_tokens(sentences[i]) + 1
            if used + cost > budget:
                continue
            chosen.add(i)
            used += cost
        return "\n".join(sentences[i] for i in sorted(chosen))

    def _fit(self, text: str, budget: int) -> str:
        """``text``, or as many of its first sentences as fit in ``budget`` tokens."""
        if budget <= 0:
            return ""
        if self.count_tokens(text) <= budget:
            return text
        kept = ""
        for match in _SENTENCE.finditer(text):
            candidate = text[: match.start()].rstrip()
            if self.count_tokens(candidate) > budget:
                break
            kept = candidate
        return kept


def _stems(text: str) -> set[str]:
    # Five letters are stem enough to match "cancelled" with "cancellation".
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 2}
