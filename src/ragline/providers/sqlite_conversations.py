"""The embedded conversation store (:class:`SqliteConversations`): stored responses and
conversations' turns in a small SQLite file beside the records, so that a follow-up
finds its conversation after a restart."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..lifetime import Lifetime
from ._sqlite_store import SqliteStore
from .conversations import StoredResponse, Turn

__all__ = ["SqliteConversations"]


# No foreign key from the turns to their conversation: SQLite enforces one only with a
# pragma on every connection, so the turns are deleted with it in the same transaction.
_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS responses (
    response_id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL, body TEXT NOT NULL, input_items TEXT NOT NULL, context TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at);
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL);
CREATE INDEX IF NOT EXISTS conversations_by_expiry ON conversations (expires_at);
CREATE TABLE IF NOT EXISTS conversation_turns (
    conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, messages TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (conversation_id, seq));
"""
_RESPONSE = (
    "SELECT response_id, owner, created_at, expires_at, body, input_items, context FROM responses"
)
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


class SqliteConversations(SqliteStore):
    """:class:`~ragline.providers.conversations.ConversationStore` in one SQLite file;
    each call runs on the thread bridge under the caller's lifetime, each write in one
    transaction."""

    schema = _SCHEMA

    # -- responses ---------------------------------------------------------------------
    async def save_response(self, response: StoredResponse, lifetime: Lifetime) -> None:
        r = response
        row = (
            r.id,
            r.owner,
            r.created_at,
            r.expires_at,
            json.dumps(r.body),
            json.dumps(r.input_items),
            json.dumps(r.context),
        )
        await self._call(
            lifetime,
            lambda db: db.execute(
                "INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (response_id) "
                "DO UPDATE SET expires_at = excluded.expires_at, body = excluded.body, "
                "input_items = excluded.input_items, context = excluded.context",
                row,
            ),
        )

    async def response(self, response_id: str, lifetime: Lifetime) -> StoredResponse | None:
        now = time.time()
        rows = await self._call(
            lifetime,
            lambda db: db.execute(
                f"{_RESPONSE} WHERE response_id = ? AND {_LIVE}", (response_id, now)
            ).fetchall(),
        )
        return _response(rows[0]) if rows else None

    async def delete_response(self, response_id: str, lifetime: Lifetime) -> bool:
        # An expired one is deleted too, but there was none to the caller: response()
        # would not have found it.
        now = time.time()
        rows = await self._call(
            lifetime,
            lambda db: db.execute(
                "DELETE FROM responses WHERE response_id = ? RETURNING expires_at",
                (response_id,),
            ).fetchall(),
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
        now = time.time()

        def add(db: sqlite3.Connection) -> None:
            # An expired conversation that expire() has not reached yet is gone already:
            # this turn starts a new one, owned by ``owner``.
            (expired,) = db.execute(
                "SELECT COUNT(*) FROM conversations WHERE conversation_id = ? AND expires_at <= ?",
                (conversation_id, now),
            ).fetchone()
            if expired:
                _clear(db, conversation_id)
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?) ON CONFLICT (conversation_id) "
                "DO UPDATE SET expires_at = excluded.expires_at",
                (conversation_id, owner, expires_at),
            )
            db.execute(
                "INSERT INTO conversation_turns SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ? "
                "FROM conversation_turns WHERE conversation_id = ?",
                (conversation_id, json.dumps(messages), now, conversation_id),
            )

        await self._call(lifetime, add)

    async def conversation(
        self, conversation_id: str, lifetime: Lifetime, *, limit: int = 50
    ) -> tuple[str, list[Turn]] | None:
        now = time.time()
        rows = await self._call(
            lifetime,
            lambda db: db.execute(
                "SELECT c.owner, t.seq, t.messages, t.at FROM conversations c "
                "JOIN conversation_turns t USING (conversation_id) "
                f"WHERE c.conversation_id = ? AND {_LIVE} ORDER BY t.seq DESC LIMIT ?",
                (conversation_id, now, limit),
            ).fetchall(),
        )
        if not rows:
            return None
        turns = [Turn(int(r[1]), json.loads(r[2]), float(r[3])) for r in reversed(rows)]
        return str(rows[0][0]), turns

    async def clear_conversation(self, conversation_id: str, lifetime: Lifetime) -> None:
        await self._call(lifetime, lambda db: _clear(db, conversation_id))

    async def expire(self, now: float, lifetime: Lifetime) -> list[str]:
        def expire(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "DELETE FROM responses WHERE expires_at <= ? RETURNING response_id", (now,)
            ).fetchall()
            db.execute(
                "DELETE FROM conversation_turns WHERE conversation_id IN (SELECT "
                "conversation_id FROM conversations WHERE expires_at <= ?)",
                (now,),
            )
            db.execute("DELETE FROM conversations WHERE expires_at <= ?", (now,))
            return [str(row[0]) for row in rows]

        return await self._call(lifetime, expire)


def _clear(db: sqlite3.Connection, conversation_id: str) -> None:
    db.execute("DELETE FROM conversation_turns WHERE conversation_id = ?", (conversation_id,))
    db.execute("DELETE FROM conversations WHERE conversation_id = ?", (conversation_id,))


def _response(row: tuple[Any, ...]) -> StoredResponse:
    return StoredResponse(
        id=str(row[0]),
        owner=str(row[1]),
        created_at=float(row[2]),
        expires_at=None if row[3] is None else float(row[3]),
        body=json.loads(row[4]),
        input_items=json.loads(row[5]),
        context=json.loads(row[6]),
    )
