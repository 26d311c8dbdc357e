"""The record store and job store on PostgreSQL (:class:`PostgresRecords`), shared by
every replica and worker and composed on their :class:`~ragline.providers.postgres.PostgresPool`.
Keyword search is BM25 over PostgreSQL's full-text index (English stemming and stop
words), with the statistics kept beside the chunks."""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from ..access import Readable, acl_class
from ..lifetime import Lifetime
from ..models import Chunk, DocumentRecord, Hit
from .postgres import PostgresPool

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["PostgresRecords", "prune_documents"]


class PostgresRecords:
    """:class:`~ragline.providers.RecordStore` and :class:`~ragline.providers.JobStore`
    on PostgreSQL. Other writers may be at work on any collection: garbage collection
    takes only what a writer itself, or a dead one, left half-written."""

    shared = True

    def __init__(self, pool: PostgresPool, *, abandoned_after: float = 6 * 3600.0) -> None:
        self.pool = pool
        self.abandoned_after = abandoned_after

    def __repr__(self) -> str:
        return f"PostgresRecords({self.pool!r})"

    # -- documents ---------------------------------------------------------------------
    async def documents(self, collection: str, lifetime: Lifetime) -> dict[str, DocumentRecord]:
        rows = await self.pool.rows(
            lifetime,
            "SELECT document_id, content_hash, generation, chunks, source, updated_at "
            "FROM documents WHERE collection = %s",
            (collection,),
        )
        return {row[0]: DocumentRecord(*row) for row in rows}

    async def active(
        self, collection: str, document_ids: Sequence[str], lifetime: Lifetime
    ) -> dict[str, int]:
        rows = await self.pool.rows(
            lifetime,
            "SELECT document_id, generation FROM documents "
            "WHERE collection = %s AND document_id = ANY(%s)",
            (collection, list(set(document_ids))),
        )
        return {row[0]: int(row[1]) for row in rows}

    async def begin_generation(
        self, collection: str, document_id: str, owner: str, lifetime: Lifetime
    ) -> int:
        async with self.pool.connection(lifetime, transaction=True) as conn:
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
                "INSERT INTO generations (collection, document_id, generation, state, owner, "
                "began_at) VALUES (%s, %s, %s, 'writing', %s, %s)",
                (collection, document_id, generation, owner, time.time()),
            )
        return generation

    async def intend_chunks(
        self, collection: str, chunks: Sequence[Chunk], lifetime: Lifetime
    ) -> None:
        if not chunks:
            return
        # One statement for the batch, with the BM25 statistics it adds. PostgreSQL text
        # cannot hold NUL; keyword search loses nothing without it.
        async with self.pool.connection(lifetime, transaction=True) as conn:
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
        self, collection: str, query: str, limit: int, lifetime: Lifetime, *, readable: Readable
    ) -> list[Hit]:
        """BM25 (k1 1.2, b 0.75, as FTS5) over the visible chunks that share a stemmed
        word with the query, found through the GIN index, of documents of the
        ``readable`` ACL classes only."""
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        rows = await self.pool.rows(
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
            "AND d.generation = c.generation, q WHERE c.collection = %(c)s AND c.words @@ q.q "
            "AND (%(all)s OR d.acl = ANY(%(acl)s))) "
            "SELECT f.document_id, f.chunk_index, f.text, f.source, "
            "sum(i.idf * array_length(w.positions, 1) * 2.2 / (array_length(w.positions, 1) "
            "+ 1.2 * (0.25 + 0.75 * f.length / s.avgdl))) AS score, f.generation "
            "FROM found f CROSS JOIN LATERAL unnest(f.words) w JOIN idf i ON i.term = w.lexeme, "
            "s GROUP BY f.chunk_id, f.document_id, f.chunk_index, f.text, f.source, "
            "f.generation ORDER BY score DESC, f.chunk_id LIMIT %(limit)s",
            {
                "any": " | ".join(words),
                "text": " ".join(words),
                "c": collection,
                "limit": limit,
                "all": readable.classes is None,
                "acl": sorted(readable.classes or ()),
            },
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
        readers: Sequence[str],
    ) -> None:
        acl = acl_class(readers)
        async with self.pool.connection(lifetime, transaction=True) as conn:
            await conn.execute(
                "INSERT INTO acl_classes VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (collection, acl, sorted(set(readers))),
            )
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
                "INSERT INTO documents (collection, document_id, content_hash, generation, "
                "chunks, source, updated_at, acl) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (collection, document_id) DO UPDATE SET "
                "content_hash = excluded.content_hash, generation = excluded.generation, "
                "chunks = excluded.chunks, source = excluded.source, "
                "updated_at = excluded.updated_at, acl = excluded.acl",
                (
                    collection,
                    document_id,
                    content_hash,
                    generation,
                    chunks,
                    _text(source),
                    time.time(),
                    acl,
                ),
            )

    async def acl_classes(self, collection: str, lifetime: Lifetime) -> dict[int, list[str]]:
        rows = await self.pool.rows(
            lifetime, "SELECT acl, readers FROM acl_classes WHERE collection = %s", (collection,)
        )
        return {int(r[0]): list(r[1]) for r in rows}

    async def prune(self, collection: str, keep: Collection[str], lifetime: Lifetime) -> int:
        async with self.pool.connection(lifetime, transaction=True) as conn:
            return await prune_documents(conn, collection, keep)

    # -- garbage -----------------------------------------------------------------------
    async def garbage(
        self, collection: str, lifetime: Lifetime, *, owner: str
    ) -> list[tuple[str, int, list[str]]]:
        """Retired generations, ``owner``'s own unfinished ones (an earlier attempt of
        the same part), and unfinished ones older than ``abandoned_after`` (a writer
        that died). Never another live writer's: every replica and worker writes here."""
        rows = await self.pool.rows(
            lifetime,
            "SELECT g.document_id, g.generation, "
            "COALESCE(array_agg(c.chunk_id ORDER BY c.chunk_id) "
            "FILTER (WHERE c.chunk_id IS NOT NULL), '{}') "
            "FROM generations g LEFT JOIN chunks c ON c.collection = g.collection "
            "AND c.document_id = g.document_id AND c.generation = g.generation "
            "WHERE g.collection = %s AND (g.state = 'retired' OR (g.state = 'writing' "
            "AND (g.owner = %s OR g.began_at < %s))) "
            "GROUP BY g.document_id, g.generation ORDER BY g.document_id, g.generation",
            (collection, owner, time.time() - self.abandoned_after),
        )
        return [(str(r[0]), int(r[1]), list(r[2])) for r in rows]

    async def forget(
        self, collection: str, document_id: str, generation: int, lifetime: Lifetime
    ) -> None:
        key = {"c": collection, "d": document_id, "g": generation}
        async with self.pool.connection(lifetime, transaction=True) as conn:
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
        await self.pool.execute(
            lifetime,
            "INSERT INTO collections VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE "
            "SET embedding_model = excluded.embedding_model, "
            "dimensions = excluded.dimensions, last_ingestion = excluded.last_ingestion",
            (name, model, dimensions, time.time()),
        )

    async def collections(self, lifetime: Lifetime) -> list[dict[str, Any]]:
        rows = await self.pool.rows(
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
        await self.pool.execute(
            lifetime,
            "INSERT INTO jobs VALUES (%s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET "
            "state = excluded.state, body = excluded.body, updated_at = excluded.updated_at",
            (job_id, state, Jsonb(body), now, now),
        )

    async def jobs(
        self, lifetime: Lifetime, *, states: Sequence[str] = ()
    ) -> list[tuple[str, str, dict[str, Any]]]:
        if states:
            rows = await self.pool.rows(
                lifetime,
                "SELECT job_id, state, body FROM jobs WHERE state = ANY(%s) "
                "ORDER BY created_at, job_id",
                (list(states),),
            )
        else:
            rows = await self.pool.rows(
                lifetime, "SELECT job_id, state, body FROM jobs ORDER BY created_at, job_id"
            )
        return [(str(r[0]), str(r[1]), dict(r[2])) for r in rows]

    async def job(self, job_id: str, lifetime: Lifetime) -> tuple[str, dict[str, Any]] | None:
        rows = await self.pool.rows(
            lifetime, "SELECT state, body FROM jobs WHERE job_id = %s", (job_id,)
        )
        return (str(rows[0][0]), dict(rows[0][1])) if rows else None


async def prune_documents(
    conn: AsyncConnection[Any], collection: str, keep: Collection[str]
) -> int:
    """Make the documents of ``collection`` not in ``keep`` invisible (their generations
    retired), in ``conn``'s transaction: :meth:`PostgresRecords.prune`, and the prune of
    a distributed job once every part has succeeded. How many."""
    cursor = await conn.execute(
        "WITH gone AS (DELETE FROM documents WHERE collection = %(c)s "
        "AND document_id <> ALL(%(keep)s) RETURNING document_id) "
        "UPDATE generations SET state = 'retired' WHERE collection = %(c)s "
        "AND state = 'active' AND document_id IN (SELECT document_id FROM gone) "
        "RETURNING document_id",
        {"c": collection, "keep": list(keep)},
    )
    return len(await cursor.fetchall())


async def _lock_stats(conn: AsyncConnection[Any], collection: str) -> None:
    # The BM25 statistics of a collection change one transaction at a time: workers
    # writing to it at once would otherwise lock term rows in clashing orders.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (f"stats\x1f{collection}",)
    )


def _text(value: str) -> str:
    return value.replace("\x00", "")
