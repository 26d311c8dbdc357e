"""The record store and job store on PostgreSQL, shared by every replica and worker.

psycopg 3 (async) over a connection pool. Each query runs in the caller's task, under
its lifetime: when that is cancelled, psycopg sends PostgreSQL a cancel request for the
running query and waits for it, so nothing keeps running on the server for nobody.

The schema comes from the numbered SQL files in ``providers/migrations/``, applied once
each, in order, under an advisory lock (so replicas that start together apply it once),
and recorded in ``ragline_migrations``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import Unavailable, UpstreamError
from ..lifetime import Lifetime
from ..models import Chunk, DocumentRecord, Hit
from ..settings import redact

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresRecords", "migrations"]

# pg_advisory_xact_lock key: "ragline" in ASCII, so other applications' keys do not clash.
_MIGRATION_LOCK = 0x7261676C696E65


def migrations() -> list[tuple[int, str, str]]:
    """The schema's migrations as (version, name, SQL), in order."""
    folder = resources.files("ragline.providers") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


class PostgresRecords:
    """:class:`~ragline.providers.RecordStore` and :class:`~ragline.providers.JobStore`
    on PostgreSQL. Keyword search is BM25 over PostgreSQL's full-text index (English
    stemming and stop words), with the statistics kept beside the chunks."""

    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[Any] | None = None

    def __repr__(self) -> str:
        return f"PostgresRecords({redact(self.url)!r})"

    # -- life --------------------------------------------------------------------------
    async def open(self, lifetime: Lifetime) -> None:
        """Connect, and bring the schema up to date. An unreachable server raises
        :class:`~ragline.errors.Unavailable` naming it (its password withheld)."""
        from psycopg import Error
        from psycopg_pool import AsyncConnectionPool

        await lifetime.checkpoint()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self.connect_timeout))},
            name="ragline",
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
            async with pool.connection() as conn:
                await _migrate(conn)
        except Error as exc:
            with anyio.move_on_after(2, shield=True):
                await pool.close(timeout=1)
            raise self.error_for(exc) from None
        except BaseException:
            with anyio.move_on_after(2, shield=True):
                await pool.close(timeout=1)
            raise
        self._pool = pool

    async def aclose(self) -> None:
        """Close the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=1)

    def error_for(self, exc: Exception) -> UpstreamError:
        """psycopg's error as ours: a lost or refused connection is :class:`Unavailable`
        (503), any other a 502; the server named, its password withheld."""
        from psycopg import OperationalError

        where = redact(self.url)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(self.url, where)
        if isinstance(exc, OperationalError):
            return Unavailable(f"PostgreSQL at {where} is unreachable: {reason}")
        return UpstreamError(f"PostgreSQL at {where}: {reason}")

    @asynccontextmanager
    async def _connection(
        self, lifetime: Lifetime, *, transaction: bool = False
    ) -> AsyncIterator[AsyncConnection[Any]]:
        from psycopg import Error

        await lifetime.checkpoint()
        if self._pool is None:
            raise Unavailable(f"PostgreSQL at {redact(self.url)} is not connected")
        try:
            async with self._pool.connection() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except Error as exc:
            raise self.error_for(exc) from None

    async def _rows(
        self, lifetime: Lifetime, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[Any]:
        async with self._connection(lifetime) as conn:
            cursor = await conn.execute(sql, args)
            return await cursor.fetchall()

    async def _execute(self, lifetime: Lifetime, sql: str, args: Sequence[Any] = ()) -> None:
        async with self._connection(lifetime) as conn:
            await conn.execute(sql, args)

    # -- documents ---------------------------------------------------------------------
    async def documents(self, collection: str, lifetime: Lifetime) -> dict[str, DocumentRecord]:
        rows = await self._rows(
            lifetime,
            "SELECT document_id, content_hash, generation, chunks, source, updated_at "
            "FROM documents WHERE collection = %s",
            (collection,),
        )
        return {row[0]: DocumentRecord(*row) for row in rows}

    async def active(
        self, collection: str, document_ids: Sequence[str], lifetime: Lifetime
    ) -> dict[str, int]:
        rows = await self._rows(
            lifetime,
            "SELECT document_id, generation FROM documents "
            "WHERE collection = %s AND document_id = ANY(%s)",
            (collection, list(set(document_ids))),
        )
        return {row[0]: int(row[1]) for row in rows}

    async def begin_generation(
        self, collection: str, document_id: str, owner: str, lifetime: Lifetime
    ) -> int:
        async with self._connection(lifetime, transaction=True) as conn:
            # Two workers may begin the same document at once: one waits for the other.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"{collection}\x1f{document_id}",),
            )
            cursor = await conn.execute(
                "SELECT GREATEST("
                "(SELECT COALESCE(MAX(generation), 0) FROM generations "
                " WHERE collection = %s AND document_id = %s),"
                "(SELECT COALESCE(MAX(generation), 0) FROM documents "
                " WHERE collection = %s AND document_id = %s)) + 1",
                (collection, document_id, collection, document_id),
            )
            row = await cursor.fetchone()
            generation = int(row[0]) if row else 1
            await conn.execute(
                "INSERT INTO generations VALUES (%s, %s, %s, 'writing', %s)",
                (collection, document_id, generation, owner),
            )
        return generation

    async def intend_chunks(
        self, collection: str, chunks: Sequence[Chunk], lifetime: Lifetime
    ) -> None:
        if not chunks:
            return
        # One statement for the batch, with the BM25 statistics it adds. PostgreSQL text
        # cannot hold NUL; keyword search loses nothing without it.
        async with self._connection(lifetime, transaction=True) as conn:
            await _lock_stats(conn, collection)
            await conn.execute(
                "WITH new AS (INSERT INTO chunks (collection, chunk_id, document_id, "
                "generation, chunk_index, source, text, length) "
                "SELECT %(c)s, u.*, (SELECT COALESCE(sum(array_length(positions, 1)), 0) "
                "FROM unnest(to_tsvector('english', u.text))) "
                "FROM unnest(%(ids)s::text[], %(docs)s::text[], %(gens)s::int[], "
                "%(idx)s::int[], %(srcs)s::text[], %(texts)s::text[]) "
                "AS u(chunk_id, document_id, generation, chunk_index, source, text) "
                "ON CONFLICT DO NOTHING RETURNING words, length), "
                "counted AS (INSERT INTO chunk_stats AS s "
                "SELECT %(c)s, count(*), COALESCE(sum(length), 0) FROM new "
                "ON CONFLICT (collection) DO UPDATE SET chunks = s.chunks + excluded.chunks, "
                "total_length = s.total_length + excluded.total_length) "
                "INSERT INTO term_stats AS t SELECT %(c)s, w.lexeme, count(*) "
                "FROM new, unnest(new.words) w GROUP BY w.lexeme ORDER BY w.lexeme "
                "ON CONFLICT (collection, term) DO UPDATE SET df = t.df + excluded.df",
                {
                    "c": collection,
                    "ids": [c.id for c in chunks],
                    "docs": [c.document_id for c in chunks],
                    "gens": [c.generation for c in chunks],
                    "idx": [c.chunk_index for c in chunks],
                    "srcs": [_text(c.source) for c in chunks],
                    "texts": [_text(c.text) for c in chunks],
                },
            )

    async def keyword_search(
        self, collection: str, query: str, limit: int, lifetime: Lifetime
    ) -> list[Hit]:
        """BM25 (k1 1.2, b 0.75, as FTS5) over the visible chunks that share a stemmed
        word with the query, found through the GIN index."""
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        rows = await self._rows(
            lifetime,
            "WITH q AS (SELECT to_tsquery('english', %(any)s) AS q), "
            "terms AS (SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', "
            "%(text)s))) AS term), "
            "s AS (SELECT chunks::float8 AS n, GREATEST(total_length::float8 / "
            "GREATEST(chunks, 1), 1) AS avgdl FROM chunk_stats WHERE collection = %(c)s), "
            "idf AS (SELECT t.term, ln(1 + (s.n - t.df + 0.5) / (t.df + 0.5)) AS idf "
            "FROM term_stats t JOIN terms USING (term), s WHERE t.collection = %(c)s), "
            "found AS (SELECT c.* FROM chunks c JOIN documents d ON "
            "d.collection = c.collection AND d.document_id = c.document_id "
            "AND d.generation = c.generation, q WHERE c.collection = %(c)s AND c.words @@ q.q) "
            "SELECT f.document_id, f.chunk_index, f.text, f.source, "
            "sum(i.idf * array_length(w.positions, 1) * 2.2 / (array_length(w.positions, 1) "
            "+ 1.2 * (0.25 + 0.75 * f.length / s.avgdl))) AS score, f.generation "
            "FROM found f CROSS JOIN LATERAL unnest(f.words) w JOIN idf i ON i.term = w.lexeme, "
            "s GROUP BY f.chunk_id, f.document_id, f.chunk_index, f.text, f.source, "
            "f.generation ORDER BY score DESC, f.chunk_id LIMIT %(limit)s",
            {"any": " | ".join(words), "text": " ".join(words), "c": collection, "limit": limit},
        )
        return [
            Hit(
                str(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[5]), bm25=float(r[4])
            )
            for r in rows
        ]

    async def switch(
        self,
        collection: str,
        document_id: str,
        generation: int,
        lifetime: Lifetime,
        *,
        content_hash: str,
        chunks: int,
        source: str,
    ) -> None:
        async with self._connection(lifetime, transaction=True) as conn:
            await conn.execute(
                "UPDATE generations SET state = 'retired' "
                "WHERE collection = %s AND document_id = %s AND state = 'active'",
                (collection, document_id),
            )
            await conn.execute(
                "UPDATE generations SET state = 'active' "
                "WHERE collection = %s AND document_id = %s AND generation = %s",
                (collection, document_id, generation),
            )
            await conn.execute(
                "INSERT INTO documents VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (collection, document_id) DO UPDATE SET "
                "content_hash = excluded.content_hash, generation = excluded.generation, "
                "chunks = excluded.chunks, source = excluded.source, "
                "updated_at = excluded.updated_at",
                (
                    collection,
                    document_id,
                    content_hash,
                    generation,
                    chunks,
                    _text(source),
                    time.time(),
                ),
            )

    async def remove(self, collection: str, document_id: str, lifetime: Lifetime) -> None:
        async with self._connection(lifetime, transaction=True) as conn:
            await conn.execute(
                "DELETE FROM documents WHERE collection = %s AND document_id = %s",
                (collection, document_id),
            )
            await conn.execute(
                "UPDATE generations SET state = 'retired' "
                "WHERE collection = %s AND document_id = %s AND state = 'active'",
                (collection, document_id),
            )

    # -- garbage -----------------------------------------------------------------------
    async def garbage(
        self, collection: str, lifetime: Lifetime, *, owner: str | None = None
    ) -> list[tuple[str, int, list[str]]]:
        rows = await self._rows(
            lifetime,
            "SELECT g.document_id, g.generation, "
            "COALESCE(array_agg(c.chunk_id ORDER BY c.chunk_id) "
            "FILTER (WHERE c.chunk_id IS NOT NULL), '{}') "
            "FROM generations g LEFT JOIN chunks c ON c.collection = g.collection "
            "AND c.document_id = g.document_id AND c.generation = g.generation "
            "WHERE g.collection = %s AND (g.state = 'retired' OR (g.state = 'writing' "
            "AND (%s::text IS NULL OR g.owner = %s::text))) "
            "GROUP BY g.document_id, g.generation ORDER BY g.document_id, g.generation",
            (collection, owner, owner),
        )
        return [(str(r[0]), int(r[1]), list(r[2])) for r in rows]

    async def forget(
        self, collection: str, document_id: str, generation: int, lifetime: Lifetime
    ) -> None:
        key = {"c": collection, "d": document_id, "g": generation}
        async with self._connection(lifetime, transaction=True) as conn:
            await _lock_stats(conn, collection)
            await conn.execute(
                "WITH gone AS (DELETE FROM chunks WHERE collection = %(c)s AND "
                "document_id = %(d)s AND generation = %(g)s RETURNING words, length), "
                "counted AS (UPDATE chunk_stats SET chunks = chunks - (SELECT count(*) "
                "FROM gone), total_length = total_length - (SELECT COALESCE(sum(length), 0) "
                "FROM gone) WHERE collection = %(c)s) "
                "UPDATE term_stats t SET df = t.df - g.n FROM (SELECT w.lexeme, count(*) AS n "
                "FROM gone, unnest(gone.words) w GROUP BY w.lexeme) g "
                "WHERE t.collection = %(c)s AND t.term = g.lexeme",
                key,
            )
            await conn.execute(
                "DELETE FROM generations WHERE collection = %(c)s AND document_id = %(d)s "
                "AND generation = %(g)s AND state != 'active'",
                key,
            )

    # -- collections and jobs ------------------------------------------------------------
    async def touch_collection(
        self, name: str, model: str, dimensions: int, lifetime: Lifetime
    ) -> None:
        await self._execute(
            lifetime,
            "INSERT INTO collections VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE "
            "SET embedding_model = excluded.embedding_model, "
            "dimensions = excluded.dimensions, last_ingestion = excluded.last_ingestion",
            (name, model, dimensions, time.time()),
        )

    async def collections(self, lifetime: Lifetime) -> list[dict[str, Any]]:
        rows = await self._rows(
            lifetime,
            "SELECT c.name, c.embedding_model, c.dimensions, c.last_ingestion, "
            "COUNT(d.document_id), COALESCE(SUM(d.chunks), 0) FROM collections c "
            "LEFT JOIN documents d ON d.collection = c.name GROUP BY c.name ORDER BY c.name",
        )
        keys = ("name", "embedding_model", "dimensions", "last_ingestion", "documents", "chunks")
        return [dict(zip(keys, (*r[:4], int(r[4]), int(r[5])), strict=True)) for r in rows]

    async def save_job(
        self, job_id: str, state: str, body: dict[str, Any], lifetime: Lifetime
    ) -> None:
        from psycopg.types.json import Jsonb

        now = time.time()
        await self._execute(
            lifetime,
            "INSERT INTO jobs VALUES (%s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET "
            "state = excluded.state, body = excluded.body, updated_at = excluded.updated_at",
            (job_id, state, Jsonb(body), now, now),
        )

    async def jobs(
        self, lifetime: Lifetime, *, states: Sequence[str] = ()
    ) -> list[tuple[str, str, dict[str, Any]]]:
        if states:
            rows = await self._rows(
                lifetime,
                "SELECT job_id, state, body FROM jobs WHERE state = ANY(%s) "
                "ORDER BY created_at, job_id",
                (list(states),),
            )
        else:
            rows = await self._rows(
                lifetime, "SELECT job_id, state, body FROM jobs ORDER BY created_at, job_id"
            )
        return [(str(r[0]), str(r[1]), dict(r[2])) for r in rows]

    async def job(self, job_id: str, lifetime: Lifetime) -> tuple[str, dict[str, Any]] | None:
        rows = await self._rows(
            lifetime, "SELECT state, body FROM jobs WHERE job_id = %s", (job_id,)
        )
        return (str(rows[0][0]), dict(rows[0][1])) if rows else None


async def _migrate(conn: AsyncConnection[Any]) -> None:
    """Apply the migrations not applied yet, in one transaction, one replica at a time."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ragline_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM ragline_migrations")
        done = {row[0] for row in await cursor.fetchall()}
        for version, name, sql in migrations():
            if version not in done:
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO ragline_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )


async def _lock_stats(conn: AsyncConnection[Any], collection: str) -> None:
    # The BM25 statistics of a collection change one transaction at a time: workers
    # writing to it at once would otherwise lock term rows in clashing orders.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (f"stats\x1f{collection}",)
    )


def _text(value: str) -> str:
    return value.replace("\x00", "")
