"""The coordination stores on PostgreSQL (:mod:`ragline.providers.coordination`), composed
on the deployment's one :class:`~ragline.providers.postgres.PostgresPool`: notices by
LISTEN/NOTIFY, background runs with their events, Teams activities in order, and the
parts of distributed ingestion jobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from ..errors import UpstreamError
from ..lifetime import Lifetime
from .coordination import Notice, PartInputs, PartUpdate, RunEvent, RunSave, WorkKey
from .postgres import NOTICE_CHANNEL, PostgresPool
from .postgres_records import prune_documents

__all__ = ["PostgresActivities", "PostgresBus", "PostgresJobParts", "PostgresRunLog"]

_AGENT_RUNS = "run\\_%"  # LIKE: agent runs' ids (background responses' are resp_…)


class _OnPool:
    def __init__(self, pool: PostgresPool) -> None:
        self.pool = pool

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pool!r})"


class PostgresBus(_OnPool):
    """:class:`~ragline.providers.coordination.NoticeBus` over LISTEN/NOTIFY on one
    channel: every process that listens gets every notice."""

    async def publish(self, notice: Notice, lifetime: Lifetime) -> None:
        await self.pool.execute(
            lifetime, "SELECT pg_notify(%s, %s)", (NOTICE_CHANNEL, notice.encode())
        )

    async def listen(
        self, lifetime: Lifetime, *, ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[Notice]:
        async for payload in self.pool.listen(lifetime, ready=ready):
            notice = Notice.decode(payload)
            if notice is not None:  # another version's notice: not ours to read
                yield notice


class PostgresJobParts(_OnPool):
    """:class:`~ragline.providers.coordination.JobParts`: a job's parts and their inputs
    beside the job store's jobs, so that no worker needs another's disk."""

    async def create_job(
        self, job_id: str, body: dict[str, Any], parts: Sequence[PartInputs], lifetime: Lifetime
    ) -> None:
        """The job, queued, with its parts: each (server paths, files), in one transaction."""
        from psycopg.types.json import Jsonb

        now = time.time()
        async with self.pool.connection(lifetime, transaction=True) as conn:
            await conn.execute(
                "INSERT INTO jobs VALUES (%s, 'queued', %s, %s, %s)",
                (job_id, Jsonb(body), now, now),
            )
            for index, (paths, files) in enumerate(parts):
                inputs = [*paths, *(f"file:{name}" for name, _ in files)]
                await conn.execute(
                    "INSERT INTO job_parts (job_id, part, inputs) VALUES (%s, %s, %s)",
                    (job_id, index, Jsonb(inputs)),
                )
                for name, data in files:
                    await conn.execute(
                        "INSERT INTO job_files VALUES (%s, %s, %s, %s)", (job_id, index, name, data)
                    )

    async def set_task(self, job_id: str, part: int, task_id: int, lifetime: Lifetime) -> None:
        """Note the procrastinate job that runs a part."""
        await self.pool.execute(
            lifetime,
            "UPDATE job_parts SET task_id = %s WHERE job_id = %s AND part = %s",
            (task_id, job_id, part),
        )

    async def part(
        self, job_id: str, part: int, lifetime: Lifetime
    ) -> tuple[dict[str, Any], str, list[str], list[tuple[str, bytes]]]:
        """A part's job body, its state, its server paths and its files."""
        rows = await self.pool.rows(
            lifetime,
            "SELECT j.body, p.state, p.inputs FROM job_parts p JOIN jobs j USING (job_id) "
            "WHERE p.job_id = %s AND p.part = %s",
            (job_id, part),
        )
        if not rows:
            raise UpstreamError(f"ingestion job {job_id} has no part {part}")
        body, state, inputs = rows[0]
        files = await self.pool.rows(
            lifetime,
            "SELECT name, data FROM job_files WHERE job_id = %s AND part = %s ORDER BY name",
            (job_id, part),
        )
        paths = [i for i in inputs if not i.startswith("file:")]
        return dict(body), str(state), paths, [(str(n), bytes(d)) for n, d in files]

    async def parts(self, job_id: str, lifetime: Lifetime) -> list[dict[str, Any]]:
        """Every part of a job: part, state, task_id, progress, error."""
        rows = await self.pool.rows(
            lifetime,
            "SELECT part, state, task_id, progress, error FROM job_parts "
            "WHERE job_id = %s ORDER BY part",
            (job_id,),
        )
        keys = ("part", "state", "task_id", "progress", "error")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    async def save_part(self, update: PartUpdate, lifetime: Lifetime) -> None:
        """A part's new state (with the ids of the ``documents`` it saw); the job's
        follows in the same transaction: running once a part runs, and when every part
        has ended, cancelled if any was (or a cancel was asked for), else failed if any
        failed, else succeeded, when a job with ``prune`` also removes the documents
        that none of its parts saw."""
        from psycopg.types.json import Jsonb

        job_id, progress, documents = update.job_id, update.progress, update.documents
        async with self.pool.connection(lifetime, transaction=True) as conn:
            cursor = await conn.execute(
                "SELECT state, body FROM jobs WHERE job_id = %s FOR UPDATE", (job_id,)
            )
            job = await cursor.fetchone()
            await conn.execute(
                "UPDATE job_parts SET state = %s, progress = COALESCE(%s, progress), "
                "error = COALESCE(%s, error), documents = COALESCE(%s, documents) "
                "WHERE job_id = %s AND part = %s",
                (
                    update.state,
                    Jsonb(progress) if progress is not None else None,
                    update.error,
                    Jsonb(documents) if documents is not None else None,
                    job_id,
                    update.part,
                ),
            )
            if job is None or job[0] in ("succeeded", "failed", "cancelled"):
                return
            cursor = await conn.execute("SELECT state FROM job_parts WHERE job_id = %s", (job_id,))
            states = {row[0] for row in await cursor.fetchall()}
            if states & {"queued", "running"}:
                new = "running" if "running" in states or job[0] == "running" else "queued"
            elif "cancelled" in states or job[1].get("cancel_requested"):
                new = "cancelled"
            elif "failed" in states:
                new = "failed"
            else:
                new = "succeeded"
            pruned = 0
            if new == "succeeded" and job[1].get("prune"):
                cursor = await conn.execute(
                    "SELECT DISTINCT jsonb_array_elements_text(documents) FROM job_parts "
                    "WHERE job_id = %s",
                    (job_id,),
                )
                seen = [row[0] for row in await cursor.fetchall()]
                pruned = await prune_documents(conn, job[1]["collection"], seen)
            await conn.execute(
                "UPDATE jobs SET state = %s, updated_at = %s, "
                "body = jsonb_set(body, '{pruned}', to_jsonb(%s::int)) WHERE job_id = %s",
                (new, time.time(), pruned, job_id),
            )

    async def request_cancel(self, job_id: str, lifetime: Lifetime) -> None:
        """Mark a job cancelled-on-request and tell every replica (NOTIFY)."""
        async with self.pool.connection(lifetime, transaction=True) as conn:
            await conn.execute(
                "UPDATE jobs SET body = body || '{\"cancel_requested\": true}'::jsonb, "
                "updated_at = %s WHERE job_id = %s",
                (time.time(), job_id),
            )
            notice = Notice("cancel", WorkKey.job(job_id))
            await conn.execute("SELECT pg_notify(%s, %s)", (NOTICE_CHANNEL, notice.encode()))


class PostgresRunLog(_OnPool):
    """:class:`~ragline.providers.coordination.RunLog`: runs and their events in two
    tables; a save publishes the run's ``news`` in its transaction."""

    async def save_run(self, save: RunSave, lifetime: Lifetime, *, kept: int | None = None) -> None:
        """A run's snapshot and its new events, in one transaction; every replica is told
        (``news`` on the bus) so that its readers follow at once. With ``kept``, only
        that many finished agent runs are kept, the newest."""
        from psycopg.types.json import Jsonb

        run_id, events = save.run_id, save.events
        now = time.time()
        async with self.pool.connection(lifetime, transaction=True) as conn:
            await conn.execute(
                "INSERT INTO runs VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE "
                "SET state = excluded.state, snapshot = excluded.snapshot, "
                "updated_at = excluded.updated_at",
                (run_id, save.state, Jsonb(save.snapshot), now, now),
            )
            if events:
                await conn.execute(
                    "INSERT INTO run_events SELECT %s, * FROM unnest(%s::int[], %s::text[], "
                    "%s::jsonb[]) ON CONFLICT DO NOTHING",
                    (
                        run_id,
                        [seq for seq, _, _ in events],
                        [name for _, name, _ in events],
                        [Jsonb(data) for _, _, data in events],
                    ),
                )
            notice = Notice("news", WorkKey.run(run_id))
            await conn.execute("SELECT pg_notify(%s, %s)", (NOTICE_CHANNEL, notice.encode()))
            if kept is not None:
                await conn.execute(
                    "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs WHERE state "
                    "!= 'running' AND run_id LIKE %s ORDER BY updated_at DESC OFFSET %s)",
                    (_AGENT_RUNS, kept),
                )

    async def run(self, run_id: str, lifetime: Lifetime) -> dict[str, Any] | None:
        """A run's last saved snapshot, or None."""
        rows = await self.pool.rows(
            lifetime, "SELECT snapshot FROM runs WHERE run_id = %s", (run_id,)
        )
        return dict(rows[0][0]) if rows else None

    async def run_events(self, run_id: str, first: int, lifetime: Lifetime) -> list[RunEvent]:
        """A run's saved events from number ``first`` on."""
        rows = await self.pool.rows(
            lifetime,
            "SELECT seq, event, data FROM run_events WHERE run_id = %s AND seq >= %s ORDER BY seq",
            (run_id, first),
        )
        return [(int(r[0]), str(r[1]), dict(r[2])) for r in rows]

    async def runs(
        self, lifetime: Lifetime, *, owner: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The newest agent runs' snapshots, newest first (only ``owner``'s unless None)."""
        rows = await self.pool.rows(
            lifetime,
            "SELECT snapshot FROM runs WHERE run_id LIKE %(agent)s AND (%(owner)s::text IS NULL "
            "OR snapshot->>'owner' = %(owner)s) ORDER BY created_at DESC LIMIT %(limit)s",
            {"agent": _AGENT_RUNS, "owner": owner, "limit": limit},
        )
        return [dict(row[0]) for row in rows]

    async def forget(self, run_ids: Sequence[str], lifetime: Lifetime) -> None:
        """Delete these runs; their events go by cascade."""
        await self.pool.execute(lifetime, "DELETE FROM runs WHERE run_id = ANY(%s)", [[*run_ids]])


class PostgresActivities(_OnPool):
    """:class:`~ragline.providers.coordination.ActivityLog`: accepted activities with a
    sequence number; a redelivery to any replica hits the unique key."""

    async def accept_activity(
        self, conversation_id: str, activity_id: str, window: float, lifetime: Lifetime
    ) -> int | None:
        """Record an accepted activity: its place in its conversation, or None when any
        replica accepted it within ``window`` seconds (a redelivery)."""
        now = time.time()
        async with self.pool.connection(lifetime, transaction=True) as conn:
            # Forget what is past the window (and done), so a late redelivery is served.
            await conn.execute(
                "DELETE FROM bot_activities WHERE conversation_id = %s AND activity_id = %s "
                "AND accepted_at < %s",
                (conversation_id, activity_id, now - window),
            )
            cursor = await conn.execute(
                "INSERT INTO bot_activities (conversation_id, activity_id, accepted_at) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING seq",
                (conversation_id, activity_id, now),
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else None

    async def turn_clear(
        self, conversation_id: str, seq: int, stale_before: float, lifetime: Lifetime
    ) -> bool:
        """Whether every earlier activity of the conversation is done (one accepted
        before ``stale_before`` counts as done: its replica died mid-turn)."""
        rows = await self.pool.rows(
            lifetime,
            "SELECT 1 FROM bot_activities WHERE conversation_id = %s AND seq < %s "
            "AND NOT done AND accepted_at >= %s LIMIT 1",
            (conversation_id, seq, stale_before),
        )
        return not rows

    async def finish_activity(self, conversation_id: str, seq: int, lifetime: Lifetime) -> None:
        """An activity's turn has ended; the conversation's next turn, on any replica,
        may start (``news`` for the conversation)."""
        async with self.pool.connection(lifetime, transaction=True) as conn:
            await conn.execute("UPDATE bot_activities SET done = true WHERE seq = %s", (seq,))
            notice = Notice("news", WorkKey.conversation(conversation_id))
            await conn.execute("SELECT pg_notify(%s, %s)", (NOTICE_CHANNEL, notice.encode()))
