"""The default prompt composer: system instructions, numbered passages, the query."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..lifetime import Lifetime
from ..models import ChatRequest, Hit, Message, Prompt
from ..prose import plain, title

__all__ = ["DEFAULT_INSTRUCTIONS", "ContextPromptComposer", "rough_tokens"]

DEFAULT_INSTRUCTIONS = (
    "You are a helpful assistant. Answer the question using the numbered context when it "
    "is relevant, cite it as [n], and say so when the context does not contain the answer."
)

_SENTENCE = re.compile(r"(?<=[.!?:])\s+|\n+")


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
    ) -> None:
        self.context_tokens = context_tokens
        self.max_passages = max_passages
        self.count_tokens = count_tokens
        self.instructions = instructions

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
        messages.extend(m for m in request.history if m.role != "system")
        blocks = self.passages(hits)
        messages.append(Message(role="user", content=_user_message(request.query, blocks)))
        return Prompt(
            tuple(messages), request.max_tokens, request.temperature, passages=len(blocks)
        )

    def passages(self, hits: Sequence[Hit]) -> list[str]:
        """The numbered passages that fit the budget, best first."""
        blocks: list[str] = []
        budget = self.context_tokens
        for n, hit in enumerate(hits[: self.max_passages], start=1):
            head = f"[{n}] {title(hit.text, hit.source)}"
            text = self._fit(plain(hit.text), budget - self.count_tokens(head) - 2)
            if not text:
                break
            block = f"{head}\n{text}"
            blocks.append(block)
            budget -= self.count_tokens(block) + 2
        return blocks

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


def _user_message(query: str, blocks: Sequence[str]) -> str:
    if not blocks:
        return query
    context = "\n\n".join(blocks)
    return f"Context:\n{context}\n\nQuestion: {query}"
