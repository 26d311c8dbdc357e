"""The SQLite file behind :class:`~ragline.providers.sqlite.SqliteRecords`: one
connection behind a lock, every method blocking and quick (the facade runs them on the
thread bridge)."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..access import acl_class
from ..models import Chunk, DocumentRecord, Hit

__all__ = ["SqliteFile"]

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL, document_id TEXT NOT NULL, content_hash TEXT NOT NULL,
    generation INTEGER NOT NULL, chunks INTEGER NOT NULL, source TEXT NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (collection, document_id));
CREATE TABLE IF NOT EXISTS generations (
    collection TEXT NOT NULL, document_id TEXT NOT NULL, generation INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('writing', 'active', 'retired')),
    owner TEXT, PRIMARY KEY (collection, document_id, generation));
CREATE TABLE IF NOT EXISTS chunks (
    collection TEXT NOT NULL, chunk_id TEXT NOT NULL, document_id TEXT NOT NULL,
    generation INTEGER NOT NULL, PRIMARY KEY (collection, chunk_id));
CREATE INDEX IF NOT EXISTS chunks_by_generation ON chunks (collection, document_id, generation);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_text USING fts5(
    text, collection UNINDEXED, document_id UNINDEXED, generation UNINDEXED,
    chunk_index UNINDEXED, source UNINDEXED, tokenize = 'porter unicode61');
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY, embedding_model TEXT NOT NULL, dimensions INTEGER NOT NULL,
    last_ingestion REAL);
CREATE TABLE IF NOT EXISTS acl_classes (
    collection TEXT NOT NULL, acl INTEGER NOT NULL, readers TEXT NOT NULL,
    PRIMARY KEY (collection, acl));
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, state TEXT NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL);
"""


class SqliteFile:
    """One SQLite connection behind a lock; every method is blocking and quick."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(documents)")}
            if "acl" not in columns:  # a file from before document ACLs
                self._db.execute("ALTER TABLE documents ADD COLUMN acl INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed if the block completes, rolled back otherwise."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            committed = False
            try:
                yield self._db
                self._db.execute("COMMIT")
                committed = True
            finally:
                if not committed:
                    self._db.execute("ROLLBACK")

    def _transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        with self._atomic() as db:
            for sql, args in statements:
                db.execute(sql, args)

    # -- documents ---------------------------------------------------------------------
    def documents(self, collection: str) -> dict[str, DocumentRecord]:
        """Every visible (switched-in) document of ``collection``."""
        rows = self._query(
            "SELECT document_id, content_hash, generation, chunks, source, updated_at "
            "FROM documents WHERE collection = ?",
            (collection,),
        )
        return {row[0]: DocumentRecord(*row) for row in rows}

    def active(self, collection: str, document_ids: Iterable[str]) -> dict[str, int]:
        """The visible generation of each of ``document_ids`` that has one."""
        ids = list(set(document_ids))
        found: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self._query(
                f"SELECT document_id, generation FROM documents "
                f"WHERE collection = ? AND document_id IN ({marks})",
                (collection, *part),
            )
            found.update({row[0]: int(row[1]) for row in rows})
        return found

    def begin_generation(self, collection: str, document_id: str, owner: str) -> int:
        """Reserve the next generation of a document, in state ``writing``."""
        with self._atomic() as db:
            (last,) = db.execute(
                "SELECT COALESCE(MAX(generation), 0) FROM generations "
                "WHERE collection = ? AND document_id = ?",
                (collection, document_id),
            ).fetchone()
            current = db.execute(
                "SELECT generation FROM documents WHERE collection = ? AND document_id = ?",
                (collection, document_id),
            ).fetchone()
            generation = max(int(last), int(current[0]) if current else 0) + 1
            db.execute(
                "INSERT INTO generations VALUES (?, ?, ?, 'writing', ?)",
                (collection, document_id, generation, owner),
            )
        return generation

    def intend_chunks(self, collection: str, chunks: Sequence[Chunk]) -> None:
        """Record chunks before they are written to the vector store: their ids, for
        garbage collection, and their text, for keyword (BM25) search."""
        with self._atomic() as db:
            for chunk in chunks:
                new = db.execute(
                    "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)",
                    (collection, chunk.id, chunk.document_id, chunk.generation),
                ).rowcount
                if new:
                    db.execute(
                        "INSERT INTO chunk_text VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            chunk.text,
                            collection,
                            chunk.document_id,
                            chunk.generation,
                            chunk.chunk_index,
                            chunk.source,
                        ),
                    )

    def keyword_search(
        self, collection: str, query: str, limit: int, classes: Collection[int] | None
    ) -> list[Hit]:
        """BM25 over the visible chunks' text (SQLite FTS5), best first, of documents of
        the ACL ``classes`` (None: all). The score is BM25's, higher is better.

        Scoring every matching row is half the cost, reading each one's columns to filter
        it the other half. So for a reader of every class in the collection the best
        ``2 * limit`` rows of the index are ranked first and only they are filtered: if
        ``limit`` pass, they are the answer (the same rows in the same order). Otherwise,
        or for other readers, one query filters as it ranks."""
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{word}"' for word in words)
        only = ""
        if classes is not None:
            only = f"AND documents.acl IN ({','.join(str(int(c)) for c in sorted(classes))})"
        with self._lock:
            db = self._db
            known = {row[0] for row in db.execute(_CLASSES, (collection,))}
            if (classes is None or known <= set(classes)) and limit <= 5_000:
                ranked = dict(db.execute(_RANKED, (match, 2 * limit)).fetchall())
                marks = ",".join("?" * len(ranked))
                sql = _VISIBLE.format("chunk_text.rowid", f"chunk_text.rowid IN ({marks})", only)
                rows = db.execute(sql, (*ranked, collection)).fetchall()
                if len(rows) >= limit or len(ranked) < 2 * limit:  # enough, or all there is
                    rows.sort(key=lambda r: (-ranked[r[4]], r[4]))  # ties: as FTS5 scans
                    return [_hit((*r[:4], ranked[r[4]], r[5])) for r in rows[:limit]]
            sql = _VISIBLE.format("-bm25(chunk_text)", "chunk_text MATCH ?", only)
            found = db.execute(
                f"{sql} ORDER BY bm25(chunk_text) LIMIT ?", (match, collection, limit)
            )
            return [_hit(r) for r in found]

    def switch(
        self,
        collection: str,
        document_id: str,
        generation: int,
        *,
        content_hash: str,
        chunks: int,
        source: str,
        readers: Sequence[str],
    ) -> None:
        """Make ``generation`` the visible one, in one transaction; the previous one is
        retired (its chunks are deleted afterwards, as garbage). The document's ACL
        class comes with it."""
        acl = acl_class(readers)
        self._transaction(
            [
                (
                    "INSERT INTO acl_classes VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (collection, acl, json.dumps(sorted(set(readers)))),
                ),
                (
                    "UPDATE generations SET state = 'retired' "
                    "WHERE collection = ? AND document_id = ? AND state = 'active'",
                    (collection, document_id),
                ),
                (
                    "UPDATE generations SET state = 'active' "
                    "WHERE collection = ? AND document_id = ? AND generation = ?",
                    (collection, document_id, generation),
                ),
                (
                    "INSERT INTO documents (collection, document_id, content_hash, "
                    "generation, chunks, source, updated_at, acl) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
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
                        source,
                        time.time(),
                        acl,
                    ),
                ),
            ]
        )

    def prune(self, collection: str, keep: Collection[str]) -> int:
        """Make the documents not in ``keep`` invisible, in one transaction; how many."""
        with self._atomic() as db:
            rows = db.execute(
                "SELECT document_id FROM documents WHERE collection = ?", (collection,)
            ).fetchall()
            gone = [(collection, row[0]) for row in rows if row[0] not in keep]
            db.executemany("DELETE FROM documents WHERE collection = ? AND document_id = ?", gone)
            db.executemany(
                "UPDATE generations SET state = 'retired' WHERE collection = ? AND "
                "document_id = ? AND state = 'active'",
                gone,
            )
        return len(gone)

    # -- garbage ---------------------------------------------------------------------
    def garbage(self, collection: str) -> list[tuple[str, int, list[str]]]:
        """Retired generations and every unfinished one: one process owns this file and
        writes one job at a time, so an unfinished generation is an interrupted run's."""
        rows = self._query(
            "SELECT document_id, generation FROM generations WHERE collection = ? AND "
            "state IN ('retired', 'writing')",
            (collection,),
        )
        out = []
        for document_id, generation in rows:
            ids = [
                r[0]
                for r in self._query(
                    "SELECT chunk_id FROM chunks WHERE collection = ? AND document_id = ? "
                    "AND generation = ?",
                    (collection, document_id, generation),
                )
            ]
            out.append((str(document_id), int(generation), ids))
        return out

    def forget(self, collection: str, document_id: str, generation: int) -> None:
        """Drop a generation whose chunks are gone from the vector store."""
        self._transaction(
            [
                (
                    "DELETE FROM chunks "
                    "WHERE collection = ? AND document_id = ? AND generation = ?",
                    (collection, document_id, generation),
                ),
                (
                    "DELETE FROM chunk_text "
                    "WHERE collection = ? AND document_id = ? AND generation = ?",
                    (collection, document_id, generation),
                ),
                (
                    "DELETE FROM generations WHERE collection = ? AND document_id = ? AND "
                    "generation = ? AND state != 'active'",
                    (collection, document_id, generation),
                ),
            ]
        )

    def acl_classes(self, collection: str) -> dict[int, list[str]]:
        """The read entries of each ACL class documents of ``collection`` have had."""
        rows = self._query(
            "SELECT acl, readers FROM acl_classes WHERE collection = ?", (collection,)
        )
        return {int(r[0]): json.loads(r[1]) for r in rows}

    # -- collections and jobs ---------------------------------------------------------------
    def touch_collection(self, name: str, model: str, dimensions: int) -> None:
        """Note that ``name`` was ingested into now, with this embedding model."""
        self._transaction(
            [
                (
                    "INSERT INTO collections VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                    "SET embedding_model = excluded.embedding_model, "
                    "dimensions = excluded.dimensions, last_ingestion = excluded.last_ingestion",
                    (name, model, dimensions, time.time()),
                )
            ]
        )

    def collections(self) -> list[dict[str, Any]]:
        """Every collection with its documents, chunks, model and last ingestion."""
        rows = self._query(
            "SELECT c.name, c.embedding_model, c.dimensions, c.last_ingestion, "
            "COUNT(d.document_id), COALESCE(SUM(d.chunks), 0) FROM collections c "
            "LEFT JOIN documents d ON d.collection = c.name GROUP BY c.name ORDER BY c.name"
        )
        return [
            {
                "name": r[0],
                "embedding_model": r[1],
                "dimensions": r[2],
                "last_ingestion": r[3],
                "documents": r[4],
                "chunks": r[5],
            }
            for r in rows
        ]

    def save_job(self, job_id: str, state: str, body: dict[str, Any]) -> None:
        """Create or update a job's persisted state."""
        now = time.time()
        self._transaction(
            [
                (
                    "INSERT INTO jobs VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                    "state = excluded.state, body = excluded.body, "
                    "updated_at = excluded.updated_at",
                    (job_id, state, json.dumps(body), now, now),
                )
            ]
        )

    def jobs(self, *states: str) -> list[tuple[str, str, dict[str, Any]]]:
        """Jobs (id, state, body), oldest first, optionally only in ``states``."""
        sql = "SELECT job_id, state, body FROM jobs"
        args: tuple[str, ...] = ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = states
        rows = self._query(sql + " ORDER BY created_at", args)
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    def job(self, job_id: str) -> tuple[str, dict[str, Any]] | None:
        """One job's (state, body), or None."""
        rows = self._query("SELECT state, body FROM jobs WHERE job_id = ?", (job_id,))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None


_CLASSES = "SELECT acl FROM acl_classes WHERE collection = ?"
_RANKED = (
    "SELECT rowid, -bm25(chunk_text) FROM chunk_text WHERE chunk_text MATCH ? "
    "ORDER BY bm25(chunk_text) LIMIT ?"
)
_VISIBLE = (  # the hits' columns with {0} as the score, {1} which rows, {2} an ACL filter
    "SELECT chunk_text.document_id, chunk_text.chunk_index, chunk_text.text, "
    "chunk_text.source, {0}, chunk_text.generation FROM chunk_text JOIN documents "
    "ON documents.collection = chunk_text.collection AND documents.document_id = "
    "chunk_text.document_id AND documents.generation = chunk_text.generation "
    "WHERE {1} AND chunk_text.collection = ? {2}"
)


def _hit(r: Sequence[Any]) -> Hit:
    return Hit(str(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[5]), bm25=float(r[4]))
