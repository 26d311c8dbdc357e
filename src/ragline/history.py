"""Conversations that continue: what a follow-up remembers of the turns before it.

The policy, the same on every route (the native chat's ``conversation_id``, the Responses
API's ``previous_response_id``, a Teams conversation): a conversation is a list of turns,
each a user message and what answered it. A follow-up carries the **newest turns whole**
while they fit ``RAGLINE_HISTORY_TOKENS``; **older turns are dropped**, never cut in the
middle, and a turn that alone is larger than the budget is dropped too. Nothing is
summarised: a summary would cost a model call on every turn, and the small local model
writes poor ones. The turns are kept in the backend's
:class:`~ragline.providers.conversations.ConversationStore`, so the next turn may land on
any replica; they expire ``RAGLINE_RESPONSES_TTL`` after the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .access import Principal, owned
from .errors import NotFound
from .lifetime import Lifetime
from .models import Message
from .providers.conversations import ConversationStore

__all__ = ["History", "as_dicts", "bound", "from_dicts", "missing_conversation"]


def missing_conversation(conversation_id: str) -> NotFound:
    """The 404 of a conversation that does not exist (or is not the caller's)."""
    return NotFound(f"no conversation {conversation_id!r}", code="conversation_not_found")


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4  # about four characters per token of English text


def bound(
    messages: Sequence[Message], budget: int, count: Callable[[str], int] = _tokens
) -> tuple[Message, ...]:
    """The newest whole turns of ``messages`` (a turn begins at a user message) that fit
    ``budget`` tokens together; system messages are left out (each route sets its own)."""
    turns: list[list[Message]] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    kept: list[list[Message]] = []
    left = budget
    for turn in reversed(turns):
        cost = sum(count(m.content) + 4 for m in turn)  # 4: the role and separators
        if cost > left:
            break  # older turns than one that does not fit would leave a gap
        kept.append(turn)
        left -= cost
    return tuple(m for turn in reversed(kept) for m in turn)


def as_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as stored (only what a later turn needs: role and text)."""
    return [
        {"role": m.role, "content": m.content} for m in messages if m.content or m.role == "user"
    ]


def from_dicts(stored: Sequence[dict[str, Any]]) -> list[Message]:
    """Stored messages back as messages (anything unreadable is skipped)."""
    out = []
    for item in stored:
        role, content = item.get("role"), item.get("content")
        if role in ("user", "assistant") and isinstance(content, str):
            out.append(Message(role=role, content=content))
    return out


class History:
    """The turns of conversations in ``store``, bounded to ``tokens`` when recalled."""

    def __init__(self, store: ConversationStore, *, tokens: int, ttl: float | None) -> None:
        self.store = store
        self.tokens = tokens
        self.ttl = ttl

    def expiry(self) -> float | None:
        """When something saved now expires."""
        return None if self.ttl is None else time.time() + self.ttl

    async def recall(
        self, conversation_id: str, lifetime: Lifetime, *, principal: Principal | None
    ) -> tuple[Message, ...]:
        """The conversation's recent turns, within the budget; none for a new one. With
        ``principal``, someone else's conversation is the 404 of one that does not exist."""
        found = await self.store.conversation(conversation_id, lifetime)
        if found is None:
            return ()
        owner, turns = found
        if principal is not None:
            owned(principal, owner, missing_conversation(conversation_id))
        return bound([m for turn in turns for m in from_dicts(turn.messages)], self.tokens)

    async def remember(
        self, conversation_id: str, owner: str, query: str, answer: str, lifetime: Lifetime
    ) -> None:
        """Add the turn ``query`` → ``answer`` (an answer cut short keeps what it said)."""
        said = [Message(role="user", content=query), Message(role="assistant", content=answer)]
        await self.store.add_turn(conversation_id, owner, as_dicts(said), self.expiry(), lifetime)

    async def forget(self, conversation_id: str, lifetime: Lifetime) -> None:
        """Start the conversation over ("new chat")."""
        await self.store.clear_conversation(conversation_id, lifetime)
