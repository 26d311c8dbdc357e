"""The default prompt composer: system instructions, numbered context, the query."""

from __future__ import annotations

from collections.abc import Sequence

from ..lifetime import Lifetime
from ..models import ChatRequest, Hit, Message, Prompt

__all__ = ["DEFAULT_INSTRUCTIONS", "ContextPromptComposer"]

DEFAULT_INSTRUCTIONS = (
    "You are a helpful assistant. Answer the question using the numbered context when it "
    "is relevant, cite it as [n], and say so when the context does not contain the answer."
)


class ContextPromptComposer:
    """Puts retrieved chunks into the last user message, bounded by ``max_context_chars``."""

    def __init__(self, *, max_context_chars: int = 2_000) -> None:
        self.max_context_chars = max_context_chars

    async def compose(
        self, request: ChatRequest, hits: Sequence[Hit], lifetime: Lifetime
    ) -> Prompt:
        await lifetime.checkpoint()
        instructions = request.system_instructions or DEFAULT_INSTRUCTIONS
        messages = [m for m in request.history if m.role == "system"]
        if not messages:
            messages = [Message(role="system", content=instructions)]
        elif request.system_instructions:
            messages.append(Message(role="system", content=request.system_instructions))
        messages.extend(m for m in request.history if m.role != "system")
        messages.append(Message(role="user", content=self._user_message(request.query, hits)))
        return Prompt(tuple(messages), request.max_tokens, request.temperature)

    def _user_message(self, query: str, hits: Sequence[Hit]) -> str:
        if not hits:
            return query
        blocks: list[str] = []
        budget = self.max_context_chars
        for n, hit in enumerate(hits, start=1):
            text = hit.text[: max(budget, 0)]
            if not text:
                break
            blocks.append(f"[{n}] ({hit.source})\n{text}")
            budget -= len(text)
        context = "\n\n".join(blocks)
        return f"Context:\n{context}\n\nQuestion: {query}"
