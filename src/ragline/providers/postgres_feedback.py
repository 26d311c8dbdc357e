"""The feedback store on PostgreSQL (:class:`PostgresFeedback`), shared by every replica:
the feedback on an answer may reach another replica than the one that sent it. Composed on
the deployment's :class:`~ragline.providers.postgres.PostgresPool`; the tables come from
migration ``0010_feedback.sql``."""

from __future__ import annotations

from typing import Any

from ..lifetime import Lifetime
from .feedback import FeedbackRecord, SentAnswer
from .postgres import PostgresPool

__all__ = ["PostgresFeedback"]

_ANSWER = (
    "SELECT conversation_id, activity_id, tenant_id, question, text, sources, model, cause, at "
    "FROM bot_answers"
)
_INSERT_ANSWER = "INSERT INTO bot_answers VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_REPLACE = (
    " ON CONFLICT (conversation_id, activity_id) DO UPDATE SET tenant_id = excluded.tenant_id, "
    "question = excluded.question, text = excluded.text, sources = excluded.sources, "
    "model = excluded.model, cause = excluded.cause, at = excluded.at"
)


class PostgresFeedback:
    """:class:`~ragline.providers.feedback.FeedbackStore` on PostgreSQL. PostgreSQL's text
    and jsonb cannot hold NUL: it is dropped from what is stored (a model's stray NUL
    must not make an answer, or the feedback on it, fail to store)."""

    def __init__(self, pool: PostgresPool) -> None:
        self.pool = pool

    def __repr__(self) -> str:
        return f"PostgresFeedback({self.pool!r})"

    async def record_answer(self, answer: SentAnswer, lifetime: Lifetime) -> None:
        await self.pool.execute(lifetime, _INSERT_ANSWER + _REPLACE, _answer_row(answer))

    async def answer(
        self, conversation_id: str, activity_id: str | None, lifetime: Lifetime
    ) -> SentAnswer | None:
        rated = None if activity_id is None else _clean(activity_id)
        rows = await self.pool.rows(
            lifetime,
            f"{_ANSWER} WHERE conversation_id = %s AND (%s::text IS NULL OR activity_id = %s) "
            "ORDER BY at DESC LIMIT 1",
            (_clean(conversation_id), rated, rated),
        )
        return _answer(rows[0]) if rows else None

    async def add_feedback(self, feedback: FeedbackRecord, lifetime: Lifetime) -> None:
        f, rated = feedback, feedback.answer
        row = _clean((rated.conversation_id, rated.activity_id, f.user_id, f.reaction, f.text))
        async with self.pool.connection(lifetime, transaction=True) as conn:
            # The answer it rates is stored with it (the foreign key wants it), unless one
            # is already: the one recorded when it was sent is what the user saw.
            await conn.execute(_INSERT_ANSWER + " ON CONFLICT DO NOTHING", _answer_row(rated))
            await conn.execute(
                "INSERT INTO bot_feedback VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (conversation_id, activity_id, user_id) DO UPDATE SET "
                "reaction = excluded.reaction, text = excluded.text, at = excluded.at",
                (*row, f.at),
            )

    async def feedback(
        self, lifetime: Lifetime, *, limit: int, before: float | None = None
    ) -> list[FeedbackRecord]:
        rows = await self.pool.rows(
            lifetime,
            "SELECT f.reaction, f.text, f.user_id, f.at, a.conversation_id, a.activity_id, "
            "a.tenant_id, a.question, a.text, a.sources, a.model, a.cause, a.at "
            "FROM bot_feedback f JOIN bot_answers a USING (conversation_id, activity_id) "
            "WHERE %(before)s::double precision IS NULL OR f.at < %(before)s "
            "ORDER BY f.at DESC, f.conversation_id, f.activity_id, f.user_id LIMIT %(limit)s",
            {"before": before, "limit": max(limit, 0)},
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
        async with self.pool.connection(lifetime, transaction=True) as conn:
            rated = await conn.execute("DELETE FROM bot_feedback WHERE at < %s", (before,))
            sent = await conn.execute(
                "DELETE FROM bot_answers a WHERE a.at < %s AND NOT EXISTS (SELECT 1 FROM "
                "bot_feedback f WHERE f.conversation_id = a.conversation_id "
                "AND f.activity_id = a.activity_id)",
                (before,),
            )
            return max(rated.rowcount, 0) + max(sent.rowcount, 0)


def _clean(value: Any) -> Any:
    """``value`` (text, or lists, tuples and dicts of it) without NUL characters."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clean(v) for v in value)
    return value


def _answer_row(a: SentAnswer) -> tuple[Any, ...]:
    from psycopg.types.json import Jsonb

    row = _clean((a.conversation_id, a.activity_id, a.tenant_id, a.question, a.text))
    return (*row, Jsonb(_clean(a.sources)), _clean(a.model), _clean(a.cause), a.at)


def _answer(row: Any) -> SentAnswer:
    return SentAnswer(
        conversation_id=str(row[0]),
        activity_id=str(row[1]),
        tenant_id=None if row[2] is None else str(row[2]),
        question=str(row[3]),
        text=str(row[4]),
        sources=list(row[5]),
        model=str(row[6]),
        cause=None if row[7] is None else str(row[7]),
        at=float(row[8]),
    )
