"""An in-memory vector store: exact cosine search, no dependencies.

For tests, examples and small corpora; it keeps nothing across restarts.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from ..access import Readable
from ..errors import InvalidRequest
from ..lifetime import Lifetime
from ..models import Chunk, Hit

__all__ = ["MemoryStore"]


class MemoryStore:
    """Exact search over chunks kept in dictionaries, one per collection."""

    def __init__(self, *, default_collection: str = "default") -> None:
        self.default_collection = default_collection
        self._collections: dict[str, dict[str, tuple[Chunk, list[float]]]] = {}

    async def search(
        self,
        vector: Sequence[float],
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]:
        await lifetime.checkpoint()
        rows = self._collections.get(collection or self.default_collection, {})
        query = _unit(vector)
        allowed = (row for row in rows.values() if readable.allows(row[0].acl))
        best = heapq.nlargest(top_k, allowed, key=lambda row: _dot(query, row[1]))
        return [
            Hit(
                document_id=chunk.document_id,
                chunk_index=chunk.chunk_index,
                text=chunk.text,
                source=chunk.source,
                score=similarity,
                generation=chunk.generation,
                similarity=similarity,
            )
            for chunk, unit in best
            for similarity in (_dot(query, unit),)
        ]

    async def upsert(
        self, chunks: Sequence[Chunk], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        await lifetime.checkpoint()
        rows = self._collections.setdefault(collection or self.default_collection, {})
        rows.update({chunk.id: (chunk, _unit(chunk.vector)) for chunk in chunks})

    async def delete(
        self, ids: Sequence[str], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        await lifetime.checkpoint()
        rows = self._collections.get(collection or self.default_collection, {})
        for chunk_id in ids:
            rows.pop(chunk_id, None)

    async def settle(self, lifetime: Lifetime, *, collection: str | None = None) -> None:
        """Nothing to do: every write is searchable at once."""
        await lifetime.checkpoint()


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise InvalidRequest(f"vector has {len(a)} dimensions, the collection {len(b)}")
    return sum(x * y for x, y in zip(a, b, strict=True))
