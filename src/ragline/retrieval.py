"""Ingestion's read side: what chat-time retrieval may see of what ingestion wrote.

A document becomes visible when ingestion switches it to its new generation, in one
transaction of the record store (see :mod:`ragline.ingestion`). Readers go through
:class:`VisibleStore`, which drops hits of generations that are not switched in, and
search keywords through :class:`RecordKeywords`. Both stand on the record store
(:class:`~ragline.providers.RecordStore`, SQLite or PostgreSQL), which is a
:class:`GenerationIndex` as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .access import Readable
from .lifetime import Lifetime
from .models import Chunk, Hit
from .providers import RecordStore, VectorStore

__all__ = ["GenerationIndex", "ReadAccess", "ReadAll", "RecordKeywords", "VisibleStore"]


@runtime_checkable
class ReadAccess(Protocol):
    """What the principal of a lifetime may find in a collection
    (:class:`ragline.grants.Grants` in ragline's application)."""

    async def readable(self, lifetime: Lifetime, collection: str | None) -> Readable:
        """The ACL classes a search may return; refuses a collection the principal may
        not read (404)."""
        ...


class ReadAll:
    """Every principal reads everything: for a pipeline without principals (a library
    user's own, tests)."""

    async def readable(self, lifetime: Lifetime, collection: str | None) -> Readable:
        await lifetime.checkpoint()
        return Readable.everything()


@runtime_checkable
class GenerationIndex(Protocol):
    """Which generation of each document readers may see."""

    async def active(
        self, collection: str, document_ids: Sequence[str], lifetime: Lifetime
    ) -> dict[str, int]:
        """The switched-in generation of each of ``document_ids`` that has one."""
        ...


class VisibleStore:
    """A vector store as readers must see it: only switched-in generations (and chunks
    written outside ingestion, generation 0). Writes pass straight through."""

    def __init__(
        self,
        store: VectorStore,
        generations: GenerationIndex,
        *,
        default_collection: str = "default",
    ) -> None:
        self.store = store
        self.generations = generations
        self.default_collection = default_collection

    async def search(
        self,
        vector: Sequence[float],
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]:
        """The best ``top_k`` visible hits of ``readable`` documents (the ACL filter is
        the store's own). Asks for ``top_k`` first and for twice as many each time
        invisible generations took places, up to eight times ``top_k``: Milvus Lite
        pays for every hit it returns (about 60 us each), and invisible hits are rare
        (a document being rewritten)."""
        name = collection or self.default_collection
        fetch = top_k
        while True:
            hits = await self.store.search(
                vector, fetch, lifetime, readable=readable, collection=name
            )
            managed = [h.document_id for h in hits if h.generation > 0]
            active = await self.generations.active(name, managed, lifetime) if managed else {}
            visible = [
                h for h in hits if h.generation == 0 or active.get(h.document_id) == h.generation
            ]
            if len(visible) >= top_k or len(hits) < fetch or fetch >= top_k * 8:
                return visible[:top_k]
            fetch *= 2

    async def upsert(
        self, chunks: Sequence[Chunk], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        await self.store.upsert(chunks, lifetime, collection=collection)

    async def delete(
        self, ids: Sequence[str], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        await self.store.delete(ids, lifetime, collection=collection)


class RecordKeywords:
    """Keyword search over the record store's copy of the visible chunks' text."""

    def __init__(self, records: RecordStore, *, default_collection: str = "default") -> None:
        self.records = records
        self.default_collection = default_collection

    async def search(
        self,
        query: str,
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]:
        """The best ``top_k`` chunks of ``readable`` documents for the query's words."""
        name = collection or self.default_collection
        return await self.records.keyword_search(name, query, top_k, lifetime, readable=readable)
