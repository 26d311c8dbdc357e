"""An optional query transformer: the configured generator rewrites the question into a
short standalone search query before retrieval."""

from __future__ import annotations

from ..lifetime import Lifetime
from ..models import Generation, Message, Prompt
from . import Generator

__all__ = ["LLMRewriter"]

_INSTRUCTIONS = (
    "Rewrite the user's question as one short search query for a document index. "
    "Answer with the query only, no explanation."
)


class LLMRewriter:
    """Asks ``generator`` for a search query; falls back to the question if it says nothing."""

    def __init__(self, generator: Generator, *, max_tokens: int = 48) -> None:
        self.generator = generator
        self.max_tokens = max_tokens

    async def transform(self, query: str, lifetime: Lifetime) -> str:
        prompt = Prompt(
            (Message(role="system", content=_INSTRUCTIONS), Message(role="user", content=query)),
            max_tokens=self.max_tokens,
            temperature=0.0,
        )
        out = await self.generator.generate(prompt, lifetime, Generation())
        rewritten = out.text.strip().strip('"').splitlines()
        return rewritten[0].strip() if rewritten and rewritten[0].strip() else query
