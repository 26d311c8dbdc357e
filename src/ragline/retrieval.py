"""Ingestion's read side: what chat-time retrieval may see of what ingestion wrote.

A document becomes visible when ingestion switches it to its new generation, in one
transaction of the record store (see :mod:`ragline.ingestion`). Readers go through
:class:`VisibleStore`, which drops hits of generations that are not switched in, and
search keywords through :class:`RecordKeywords`. Both stand on the record store
(:class:`~ragline.providers.RecordStore`, SQLite or PostgreSQL), which is a
:class:`GenerationIndex` as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import anyio

from .access import Readable
from .lifetime import Lifetime
from .models import Chunk, Hit
from .providers import Embedder, KeywordIndex, RecordStore, VectorStore

__all__ = [
    "GenerationIndex",
    "ReadAccess",
    "ReadAll",
    "RecordKeywords",
    "VisibleStore",
    "find_passages",
    "fuse",
]


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

    async def settle(self, lifetime: Lifetime, *, collection: str | None = None) -> None:
        await self.store.settle(lifetime, collection=collection)


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


async def find_passages(
    query: str,
    top_k: int,
    lifetime: Lifetime,
    *,
    embedder: Embedder,
    store: VectorStore,
    keywords: KeywordIndex | None,
    readable: Readable,
    collection: str | None,
) -> tuple[list[Hit], Sequence[float]]:
    """The ``top_k`` best hits of ``readable`` chunks for ``query``, and its vector.

    Hybrid (``keywords`` given): BM25 runs while the query is embedded and searched
    densely, each side asked for ``max(4 * top_k, 20)``, and the two are fused by rank.
    A failure of either side is raised as itself once the other is cancelled."""
    if keywords is None:
        only = (await embedder.embed([query], lifetime, kind="query"))[0]
        hits = await store.search(only, top_k, lifetime, readable=readable, collection=collection)
        return hits, only
    pool = max(top_k * 4, 20)
    found: dict[str, list[Hit]] = {}
    failures: list[Exception] = []
    vector: Sequence[float] = ()

    async def dense() -> None:
        nonlocal vector
        vector = (await embedder.embed([query], lifetime, kind="query"))[0]
        found["dense"] = await store.search(
            vector, pool, lifetime, readable=readable, collection=collection
        )

    async def lexical() -> None:
        found["lexical"] = await keywords.search(
            query, pool, lifetime, readable=readable, collection=collection
        )

    async with anyio.create_task_group() as group:

        async def side(call: Callable[[], Awaitable[None]]) -> None:
            # Kept out of the task group's ExceptionGroup: the HTTP mapping and the
            # stage's timeout see the error itself. Cancellation passes through.
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - raised below, as itself
                failures.append(exc)
                group.cancel_scope.cancel()

        group.start_soon(side, lexical)
        await side(dense)
    if failures:
        raise failures[0]
    return fuse([found["dense"], found["lexical"]], top_k), vector


def fuse(rankings: Sequence[Sequence[Hit]], top_k: int, *, k: int = 60) -> list[Hit]:
    """Reciprocal rank fusion: each chunk scores the sum of 1 / (k + rank) over the
    rankings it appears in; the hit's score becomes that sum, and it keeps the
    similarity and BM25 score of whichever rankings found it."""
    scores: dict[tuple[str, int], float] = {}
    merged: dict[tuple[str, int], Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            key = (hit.document_id, hit.chunk_index)
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            seen = merged.get(key)
            merged[key] = (
                hit
                if seen is None
                else replace(
                    seen,
                    similarity=seen.similarity if seen.similarity is not None else hit.similarity,
                    bm25=seen.bm25 if seen.bm25 is not None else hit.bm25,
                )
            )
    best = sorted(scores, key=lambda key: scores[key], reverse=True)[:top_k]
    return [replace(merged[key], score=scores[key]) for key in best]
