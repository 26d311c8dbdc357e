"""The query transformer that makes follow-ups searchable: the configured generator
rewrites the question, with the conversation before it, into one short standalone
search query before retrieval. "and how do I stop one?" after a question about
ingestion batches becomes a query that names them.

``RAGLINE_QUERY_REWRITE=follow-ups`` (the default with an upstream model) rewrites only
a question with history: a question that stands alone costs no model call. ``always``
rewrites every question, ``off`` none. ``join`` (the default with the small local model,
whose rewrites are worse than none: docs/BENCHMARKS.md §10) asks no model and searches for
the previous question and the follow-up together (:func:`ragline.factory.build_transformer`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..lifetime import Lifetime
from ..models import Generation, Message, Prompt
from . import Generator

__all__ = ["JoinRewriter", "LLMRewriter"]

_STANDALONE = (
    "Rewrite the user's question as one short search query for a document index. "
    "Answer with the query only, no explanation."
)
_FOLLOW_UP = (
    "Rewrite the user's last question as one short standalone search query for a "
    "document index: replace words like 'it', 'one' or 'that' with what they refer to "
    "in the conversation. Answer with the query only, no explanation."
)
# The rewrite reads only the end of the conversation: the turns a follow-up refers to,
# each cut short, so that its prompt stays small whatever the history holds.
_TURNS = 2
_CHARS = 600


class LLMRewriter:
    """Asks ``generator`` for a search query; falls back to the question if it says
    nothing. With ``follow_ups_only``, a question without history is left as it is."""

    def __init__(
        self, generator: Generator, *, follow_ups_only: bool = False, max_tokens: int = 48
    ) -> None:
        self.generator = generator
        self.follow_ups_only = follow_ups_only
        self.max_tokens = max_tokens

    async def transform(self, query: str, history: Sequence[Message], lifetime: Lifetime) -> str:
        said = [m for m in history if m.role in ("user", "assistant") and m.content.strip()]
        if not said and self.follow_ups_only:
            await lifetime.checkpoint()
            return query
        if said:
            lines = [f"{m.role.title()}: {_cut(m.content)}" for m in said[-2 * _TURNS :]]
            conversation = "\n".join(lines)
            ask = f"Conversation:\n{conversation}\n\nLast question: {query}\nSearch query:"
            messages = (
                Message(role="system", content=_FOLLOW_UP),
                Message(role="user", content=ask),
            )
        else:
            messages = (
                Message(role="system", content=_STANDALONE),
                Message(role="user", content=query),
            )
        prompt = Prompt(messages, max_tokens=self.max_tokens, temperature=0.0)
        out = await self.generator.generate(prompt, lifetime, Generation())
        lines = out.text.strip().splitlines()
        first = lines[0].strip().strip('"').strip() if lines else ""
        return first or query


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _CHARS else text[:_CHARS].rsplit(" ", 1)[0] + " …"


class JoinRewriter:
    """A follow-up searched for together with the question before it: no model call.
    On the follow-up set it finds the right passage more often than the local model's
    rewrite does (docs/BENCHMARKS.md §10)."""

    async def transform(self, query: str, history: Sequence[Message], lifetime: Lifetime) -> str:
        await lifetime.checkpoint()
        asked = [m.content for m in history if m.role == "user" and m.content.strip()]
        return f"{_cut(asked[-1])} {query}" if asked else query
