"""The embedded record store and job store: which generation of each document is
visible, every chunk id ever written, and the ingestion jobs, in one small SQLite file
beside the vector store (:class:`SqliteRecords`; its twin for many replicas is
:mod:`ragline.providers.postgres_records`).

The vector store holds chunks; this file decides which of them exist. A document's new
generation is written first, its chunk ids recorded here *before* they are upserted, and
only then switched in one transaction. So after any crash the orphans can be found and
deleted by id, and readers never see a half-written document.

Chunks of generation 0 were written straight through the store protocol (not ingested):
they are always visible. Ingested generations start at 1.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ..access import Readable
from ..lifetime import Lifetime
from ..models import Chunk, DocumentRecord, Hit
from ..threads import ThreadBridge
from ._sqlite_file import SqliteFile

__all__ = ["KEYWORD_HANDOVER_CHUNKS", "SqliteRecords"]

# Past this many chunks in a collection, FTS5 keyword search is slow (bench/scale.py; see
# docs/DEPLOY.md, "When an embedded part should hand over"): PostgreSQL is no faster.
KEYWORD_HANDOVER_CHUNKS = 100_000
log = logging.getLogger("ragline.providers.sqlite")


class SqliteRecords:
    """The record store and job store in one SQLite file. Each call runs its blocking
    query on the thread bridge under the caller's lifetime. One process owns the file
    and writes one job at a time: it is never shared."""

    shared = False

    def __init__(
        self,
        path: str | Path,
        bridge: ThreadBridge,
        *,
        handover_chunks: int | None = KEYWORD_HANDOVER_CHUNKS,
    ) -> None:
        self.path = Path(path)
        self.bridge = bridge
        self._file: SqliteFile | None = None
        self.handover_chunks = handover_chunks  # warn past it (None: never)
        self._warned: set[tuple[str, str]] = set()  # (file, collection): said once
        self._sizes: dict[str, int] = {}  # collection → chunks, as last counted plus since

    @property
    def file(self) -> SqliteFile:
        """The file, created on first use (a server that never ingests makes none)."""
        if self._file is None:
            self._file = SqliteFile(self.path)
        return self._file

    async def open(self, lifetime: Lifetime) -> None:
        """Create or open the file, on the thread bridge."""
        # Reading the property creates the file: blocking, so on the bridge.
        await self.bridge.call(lifetime, getattr, self, "file")

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()

    async def documents(self, collection: str, lifetime: Lifetime) -> dict[str, DocumentRecord]:
        return await self.bridge.call(lifetime, self.file.documents, collection)

    async def active(
        self, collection: str, document_ids: Sequence[str], lifetime: Lifetime
    ) -> dict[str, int]:
        return await self.bridge.call(lifetime, self.file.active, collection, document_ids)

    async def begin_generation(
        self, collection: str, document_id: str, owner: str, lifetime: Lifetime
    ) -> int:
        return await self.bridge.call(
            lifetime, self.file.begin_generation, collection, document_id, owner
        )

    async def intend_chunks(
        self, collection: str, chunks: Sequence[Chunk], lifetime: Lifetime
    ) -> None:
        await self.bridge.call(lifetime, self._intend, collection, chunks)

    def _intend(self, collection: str, chunks: Sequence[Chunk]) -> None:
        self.file.intend_chunks(collection, chunks)
        if self.handover_chunks is not None:
            self._check_size(collection, len(chunks))

    def _check_size(self, collection: str, added: int) -> None:
        """After a committed batch: warn once when a collection's keyword index passes its
        hand-over size. Counted (one indexed count) on the first batch and when the estimate
        (last count + chunks recorded since) reaches the limit; never on a search."""
        key, limit = (str(self.path.resolve()), collection), self.handover_chunks or 0
        known = self._sizes.get(collection)
        if key in self._warned or (known is not None and known + added < limit):
            self._sizes[collection] = (known or 0) + added
            return
        ((count,),) = self.file._query(
            "SELECT count(*) FROM chunks WHERE collection = ?", (collection,)
        )
        self._sizes[collection] = int(count)
        if count >= limit:
            self._warned.add(key)
            log.warning(
                f"collection {collection!r} holds {count} chunks in the embedded SQLite "
                f"keyword index ({self.path}), past {limit}: its BM25 searches take about "
                "0.3 s or more and grow with the collection, and PostgreSQL's are no faster. "
                "Search it dense only (RAGLINE_RETRIEVAL_MODE=dense) or split it; move the "
                "records to PostgreSQL (RAGLINE_DATABASE_URL) when processes must share it. "
                "See docs/DEPLOY.md, 'When an embedded part should hand over to its server'"
            )

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
        await self.bridge.call(
            lifetime,
            self.file.switch,
            collection,
            document_id,
            generation,
            content_hash=content_hash,
            chunks=chunks,
            source=source,
            readers=readers,
        )

    async def prune(self, collection: str, keep: Collection[str], lifetime: Lifetime) -> int:
        return await self.bridge.call(lifetime, self.file.prune, collection, set(keep))

    async def garbage(
        self, collection: str, lifetime: Lifetime, *, owner: str
    ) -> list[tuple[str, int, list[str]]]:
        # One writer at a time (this process owns the file): whatever is unfinished was
        # left by an interrupted run, whoever its owner.
        return await self.bridge.call(lifetime, self.file.garbage, collection)

    async def forget(
        self, collection: str, document_id: str, generation: int, lifetime: Lifetime
    ) -> None:
        await self.bridge.call(lifetime, self.file.forget, collection, document_id, generation)

    async def keyword_search(
        self, collection: str, query: str, limit: int, lifetime: Lifetime, *, readable: Readable
    ) -> list[Hit]:
        return await self.bridge.call(
            lifetime, self.file.keyword_search, collection, query, limit, readable.classes
        )

    async def acl_classes(self, collection: str, lifetime: Lifetime) -> dict[int, list[str]]:
        return await self.bridge.call(lifetime, self.file.acl_classes, collection)

    async def touch_collection(
        self, name: str, model: str, dimensions: int, lifetime: Lifetime
    ) -> None:
        await self.bridge.call(lifetime, self.file.touch_collection, name, model, dimensions)

    async def collections(self, lifetime: Lifetime) -> list[dict[str, Any]]:
        return await self.bridge.call(lifetime, self.file.collections)

    async def save_job(
        self, job_id: str, state: str, body: dict[str, Any], lifetime: Lifetime
    ) -> None:
        await self.bridge.call(lifetime, self.file.save_job, job_id, state, body)

    async def jobs(
        self, lifetime: Lifetime, *, states: Sequence[str] = ()
    ) -> list[tuple[str, str, dict[str, Any]]]:
        return await self.bridge.call(lifetime, self.file.jobs, *states)

    async def job(self, job_id: str, lifetime: Lifetime) -> tuple[str, dict[str, Any]] | None:
        return await self.bridge.call(lifetime, self.file.job, job_id)
