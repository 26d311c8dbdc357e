"""The conversation store on PostgreSQL (:class:`PostgresConversations`), shared by every
replica: a follow-up may reach another replica than the turn before it. Composed on the
deployment's :class:`~ragline.providers.postgres.PostgresPool`; the tables come from
migration ``0009_conversations.sql``."""

from __future__ import annotations

import time
from typing import Any

from ..lifetime import Lifetime
from .conversations import StoredResponse, Turn
from .postgres import PostgresPool

__all__ = ["PostgresConversations"]

_RESPONSE = (
    "SELECT response_id, owner, created_at, expires_at, body, input_items, context FROM responses"
)


class PostgresConversations:
    """:class:`~ragline.providers.conversations.ConversationStore` on PostgreSQL."""

    def __init__(self, pool: PostgresPool) -> None:
        self.pool = pool

    def __repr__(self) -> str:
        return f"PostgresConversations({self.pool!r})"

    # -- responses ---------------------------------------------------------------------
    async def save_response(self, response: StoredResponse, lifetime: Lifetime) -> None:
        from psycopg.types.json import Jsonb

        r = response
        await self.pool.execute(
            lifetime,
            "INSERT INTO responses VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (response_id) DO UPDATE SET expires_at = excluded.expires_at, "
            "body = excluded.body, input_items = excluded.input_items, "
            "context = excluded.context",
            (
                r.id,
                r.owner,
                r.created_at,
                r.expires_at,
                Jsonb(r.body),
                Jsonb(r.input_items),
                Jsonb(r.context),
            ),
        )

    async def response(self, response_id: str, lifetime: Lifetime) -> StoredResponse | None:
        rows = await self.pool.rows(
            lifetime,
            f"{_RESPONSE} WHERE response_id = %s AND (expires_at IS NULL OR expires_at > %s)",
            (response_id, time.time()),
        )
        return _response(rows[0]) if rows else None

    async def delete_response(self, response_id: str, lifetime: Lifetime) -> bool:
        # An expired one is deleted too, but there was none to the caller: response()
        # would not have found it.
        now = time.time()
        rows = await self.pool.rows(
            lifetime,
            "DELETE FROM responses WHERE response_id = %s RETURNING expires_at",
            (response_id,),
        )
        return bool(rows) and (rows[0][0] is None or rows[0][0] > now)

    # -- conversations -----------------------------------------------------------------
    async def add_turn(
        self,
        conversation_id: str,
        owner: str,
        messages: list[dict[str, Any]],
        expires_at: float | None,
        lifetime: Lifetime,
    ) -> None:
        """Append a turn, in one transaction. Two replicas adding to one conversation at
        once take turns: the upsert of the conversation's row holds that row's lock
        until commit (a second inserter of a new row waits for the first to commit, then
        updates), so the next ``seq`` is read by one transaction at a time."""
        from psycopg.types.json import Jsonb

        now = time.time()
        async with self.pool.connection(lifetime, transaction=True) as conn:
            # An expired conversation that expire() has not reached yet is gone already:
            # this turn starts a new one, owned by ``owner`` (its turns go by cascade).
            await conn.execute(
                "DELETE FROM conversations WHERE conversation_id = %s AND expires_at <= %s",
                (conversation_id, now),
            )
            await conn.execute(
                "INSERT INTO conversations VALUES (%s, %s, %s) ON CONFLICT (conversation_id) "
                "DO UPDATE SET expires_at = excluded.expires_at",
                (conversation_id, owner, expires_at),
            )
            await conn.execute(
                "INSERT INTO conversation_turns SELECT %s, COALESCE(MAX(seq), 0) + 1, %s, %s "
                "FROM conversation_turns WHERE conversation_id = %s",
                (conversation_id, Jsonb(messages), now, conversation_id),
            )

    async def conversation(
        self, conversation_id: str, lifetime: Lifetime, *, limit: int = 50
    ) -> tuple[str, list[Turn]] | None:
        # One query, so that the owner and the turns are of the same moment.
        rows = await self.pool.rows(
            lifetime,
            "SELECT c.owner, t.seq, t.messages, t.at FROM conversations c "
            "JOIN conversation_turns t USING (conversation_id) WHERE c.conversation_id = %s "
            "AND (c.expires_at IS NULL OR c.expires_at > %s) ORDER BY t.seq DESC LIMIT %s",
            (conversation_id, time.time(), limit),
        )
        if not rows:
            return None
        turns = [Turn(int(r[1]), list(r[2]), float(r[3])) for r in reversed(rows)]
        return str(rows[0][0]), turns

    async def clear_conversation(self, conversation_id: str, lifetime: Lifetime) -> None:
        await self.pool.execute(
            lifetime, "DELETE FROM conversations WHERE conversation_id = %s", (conversation_id,)
        )

    async def expire(self, now: float, lifetime: Lifetime) -> list[str]:
        async with self.pool.connection(lifetime, transaction=True) as conn:
            cursor = await conn.execute(
                "DELETE FROM responses WHERE expires_at <= %s RETURNING response_id", (now,)
            )
            gone = [str(row[0]) for row in await cursor.fetchall()]
            await conn.execute("DELETE FROM conversations WHERE expires_at <= %s", (now,))
        return gone


def _response(row: Any) -> StoredResponse:
    return StoredResponse(
        id=str(row[0]),
        owner=str(row[1]),
        created_at=float(row[2]),
        expires_at=None if row[3] is None else float(row[3]),
        body=dict(row[4]),
        input_items=list(row[5]),
        context=list(row[6]),
    )
