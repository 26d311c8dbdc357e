"""What users said about the bot's answers: every answer the bot sent (so that feedback can
be checked against it and stored with it) and the feedback itself.

Shared state like the conversation store: :class:`FeedbackStore` has an embedded
implementation (a SQLite file beside the records, :mod:`.sqlite_feedback`), a PostgreSQL
one that every replica shares (:mod:`.postgres_feedback`) and one in memory
(:mod:`.inprocess_feedback`); one conformance suite holds them to this.
:func:`ragline.backend.build_backend` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..lifetime import Lifetime

__all__ = ["FeedbackRecord", "FeedbackStore", "Reaction", "SentAnswer"]

Reaction = Literal["like", "dislike"]


@dataclass(frozen=True, slots=True)
class SentAnswer:
    """An answer the bot sent, as the user saw it: the message that may be rated."""

    activity_id: str  # the message's id in its conversation (what a feedback invoke names)
    conversation_id: str
    tenant_id: str | None
    question: str
    text: str  # the answer, as sent (without the list of sources)
    sources: list[dict[str, Any]] = field(default_factory=list)  # as the model saw them
    model: str = ""
    cause: str | None = None  # why it was cut short, if it was
    at: float = 0.0  # when it was sent (seconds since the epoch)


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A thumbs up or down (with optional text) on one answer, stored with it."""

    answer: SentAnswer
    reaction: Reaction
    text: str  # what the user wrote, or ""
    user_id: str  # who gave it (the Teams user's id)
    at: float


@runtime_checkable
class FeedbackStore(Protocol):
    """Sent answers and the feedback on them."""

    async def record_answer(self, answer: SentAnswer, lifetime: Lifetime) -> None:
        """Remember an answer the bot sent (replacing one with the same conversation and
        activity id: an answer finished by update keeps its message's id)."""
        ...

    async def answer(
        self, conversation_id: str, activity_id: str | None, lifetime: Lifetime
    ) -> SentAnswer | None:
        """The answer sent as ``activity_id`` in ``conversation_id`` (None: the newest
        answer sent there), or None."""
        ...

    async def add_feedback(self, feedback: FeedbackRecord, lifetime: Lifetime) -> None:
        """Store feedback (a user who rates the same answer again replaces their own)."""
        ...

    async def feedback(
        self, lifetime: Lifetime, *, limit: int, before: float | None = None
    ) -> list[FeedbackRecord]:
        """The newest ``limit`` feedback records given before ``before`` (None: now),
        newest first: a page, and the next page starts before the last one's ``at``."""
        ...

    async def expire(self, before: float, lifetime: Lifetime) -> int:
        """Delete the feedback given before ``before``, then the answers sent before it
        that no feedback rates any more; how many records went."""
        ...
