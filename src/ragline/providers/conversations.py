"""Conversations that continue: stored responses (the OpenAI Responses API's
``previous_response_id`` chains) and the turns of a conversation (the native chat's
``conversation_id``, a Teams conversation).

Shared state like the run log: :class:`ConversationStore` has an embedded implementation
(a SQLite file beside the records, :mod:`.sqlite_conversations`), a PostgreSQL one that
every replica shares (:mod:`.postgres_conversations`) and one in memory
(:mod:`.inprocess`); one conformance suite holds them to this.
:func:`ragline.backend.build_backend` picks one. Who may read what is decided above the
store (:func:`ragline.access.owned`): the store only remembers each record's owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..lifetime import Lifetime

__all__ = ["ConversationStore", "StoredResponse", "Turn"]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as stored: its object, its input and the conversation it ends."""

    id: str
    owner: str  # the principal who created it
    created_at: float
    expires_at: float | None  # None: kept until deleted
    body: dict[str, Any]  # the Response object, as GET /v1/responses/{id} returns it
    input_items: list[dict[str, Any]] = field(default_factory=list)  # …/input_items
    # The conversation up to and including this response's output, as messages
    # ({"role", "content"}), already bounded: a follow-up continues from it.
    context: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange of a conversation: its messages, oldest first."""

    seq: int  # its place in the conversation, increasing
    messages: list[dict[str, Any]]  # e.g. the user's question and the answer
    at: float  # when it was added (seconds since the epoch)


@runtime_checkable
class ConversationStore(Protocol):
    """Stored responses and conversations' turns, with their owners and expiry."""

    async def save_response(self, response: StoredResponse, lifetime: Lifetime) -> None:
        """Insert or replace the response called ``response.id`` (a background response
        is saved when it starts and again when it ends; its owner and creation time
        never change)."""
        ...

    async def response(self, response_id: str, lifetime: Lifetime) -> StoredResponse | None:
        """The stored response, or None if there is none or it has expired."""
        ...

    async def delete_response(self, response_id: str, lifetime: Lifetime) -> bool:
        """Delete a stored response; False if there was none (or it had expired)."""
        ...

    async def add_turn(
        self,
        conversation_id: str,
        owner: str,
        messages: list[dict[str, Any]],
        expires_at: float | None,
        lifetime: Lifetime,
    ) -> None:
        """Append a turn to the conversation (made, owned by ``owner``, on its first
        turn: a later turn never changes the owner) and move its expiry to
        ``expires_at``. A conversation past its expiry is gone even before
        :meth:`expire` runs: the turn starts it anew. Turns added at once, by any
        replica, are all kept, each with a ``seq`` of its own."""
        ...

    async def conversation(
        self, conversation_id: str, lifetime: Lifetime, *, limit: int = 50
    ) -> tuple[str, list[Turn]] | None:
        """The conversation's owner and its newest ``limit`` turns, oldest first; None
        if it has no turns or has expired."""
        ...

    async def clear_conversation(self, conversation_id: str, lifetime: Lifetime) -> None:
        """Forget every turn of the conversation (it may start again, with a new owner)."""
        ...

    async def expire(self, now: float, lifetime: Lifetime) -> list[str]:
        """Delete every response and conversation whose expiry is at or before ``now``;
        the ids of the responses deleted."""
        ...
