"""The embedded feedback store (:class:`SqliteFeedback`): the answers the bot sent and the
feedback on them in a small SQLite file beside the records, so that a thumbs down given
tomorrow still finds the answer it rates after a restart."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..lifetime import Lifetime
from ._sqlite_store import SqliteStore
from .feedback import FeedbackRecord, SentAnswer

__all__ = ["SqliteFeedback"]


# As in PostgreSQL (0010_feedback.sql), without the foreign key: SQLite enforces one only
# with a pragma on every connection, and nothing here deletes an answer.
_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS bot_answers (
    conversation_id TEXT NOT NULL, activity_id TEXT NOT NULL, tenant_id TEXT,
    question TEXT NOT NULL, text TEXT NOT NULL, sources TEXT NOT NULL, model TEXT NOT NULL,
    cause TEXT, at REAL NOT NULL, PRIMARY KEY (conversation_id, activity_id));
CREATE TABLE IF NOT EXISTS bot_feedback (
    conversation_id TEXT NOT NULL, activity_id TEXT NOT NULL, user_id TEXT NOT NULL,
    reaction TEXT NOT NULL, text TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (conversation_id, activity_id, user_id));
CREATE INDEX IF NOT EXISTS bot_feedback_by_time ON bot_feedback (at);
"""
_ANSWER = (
    "SELECT conversation_id, activity_id, tenant_id, question, text, sources, model, cause, at "
    "FROM bot_answers"
)
_INSERT_ANSWER = "INSERT INTO bot_answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_REPLACE = (
    " ON CONFLICT (conversation_id, activity_id) DO UPDATE SET tenant_id = excluded.tenant_id, "
    "question = excluded.question, text = excluded.text, sources = excluded.sources, "
    "model = excluded.model, cause = excluded.cause, at = excluded.at"
)


class SqliteFeedback(SqliteStore):
    """:class:`~ragline.providers.feedback.FeedbackStore` in one SQLite file; each call
    runs on the thread bridge under the caller's lifetime, each write in one
    transaction."""

    schema = _SCHEMA

    async def record_answer(self, answer: SentAnswer, lifetime: Lifetime) -> None:
        row = _answer_row(answer)
        await self._call(lifetime, lambda db: db.execute(_INSERT_ANSWER + _REPLACE, row))

    async def answer(
        self, conversation_id: str, activity_id: str | None, lifetime: Lifetime
    ) -> SentAnswer | None:
        rows = await self._call(
            lifetime,
            lambda db: db.execute(
                f"{_ANSWER} WHERE conversation_id = ? AND (? IS NULL OR activity_id = ?) "
                "ORDER BY at DESC LIMIT 1",
                (conversation_id, activity_id, activity_id),
            ).fetchall(),
        )
        return _answer(rows[0]) if rows else None

    async def add_feedback(self, feedback: FeedbackRecord, lifetime: Lifetime) -> None:
        f, rated = feedback, feedback.answer
        answer = _answer_row(rated)
        row = (rated.conversation_id, rated.activity_id, f.user_id, f.reaction, f.text, f.at)

        def add(db: sqlite3.Connection) -> None:
            # The answer it rates is stored with it, unless one is already (recorded when
            # it was sent: that one is what the user saw).
            db.execute(_INSERT_ANSWER + " ON CONFLICT DO NOTHING", answer)
            db.execute(
                "INSERT INTO bot_feedback VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (conversation_id, activity_id, user_id) DO UPDATE SET "
                "reaction = excluded.reaction, text = excluded.text, at = excluded.at",
                row,
            )

        await self._call(lifetime, add)

    async def feedback(
        self, lifetime: Lifetime, *, limit: int, before: float | None = None
    ) -> list[FeedbackRecord]:
        bound = float("inf") if before is None else before
        rows = await self._call(
            lifetime,
            lambda db: db.execute(
                "SELECT f.reaction, f.text, f.user_id, f.at, a.conversation_id, "
                "a.activity_id, a.tenant_id, a.question, a.text, a.sources, a.model, "
                "a.cause, a.at FROM bot_feedback f JOIN bot_answers a "
                "USING (conversation_id, activity_id) WHERE f.at < ? "
                "ORDER BY f.at DESC, f.conversation_id, f.activity_id, f.user_id LIMIT ?",
                (bound, max(limit, 0)),
            ).fetchall(),
        )
        return [
            FeedbackRecord(
                answer=_answer(r[4:]),
                reaction=r[0],
                text=str(r[1]),
                user_id=str(r[2]),
                at=float(r[3]),
            )
            for r in rows
        ]

    async def expire(self, before: float, lifetime: Lifetime) -> int:
        def expire(db: sqlite3.Connection) -> int:
            gone = db.execute("DELETE FROM bot_feedback WHERE at < ?", (before,)).rowcount
            gone += db.execute(
                "DELETE FROM bot_answers WHERE at < ? AND NOT EXISTS (SELECT 1 FROM "
                "bot_feedback f WHERE f.conversation_id = bot_answers.conversation_id "
                "AND f.activity_id = bot_answers.activity_id)",
                (before,),
            ).rowcount
            return int(gone)

        return await self._call(lifetime, expire)


def _answer_row(a: SentAnswer) -> tuple[Any, ...]:
    return (
        a.conversation_id,
        a.activity_id,
        a.tenant_id,
        a.question,
        a.text,
        json.dumps(a.sources),
        a.model,
        a.cause,
        a.at,
    )


def _answer(row: Any) -> SentAnswer:
    return SentAnswer(
        conversation_id=str(row[0]),
        activity_id=str(row[1]),
        tenant_id=None if row[2] is None else str(row[2]),
        question=str(row[3]),
        text=str(row[4]),
        sources=json.loads(row[5]),
        model=str(row[6]),
        cause=None if row[7] is None else str(row[7]),
        at=float(row[8]),
    )
