"""VisibleStore: what readers see of a vector store, and how many hits it asks for.

The store under it is a list of hits in rank order; the generation index says which
generation of each document is switched in. Milvus Lite pays for every hit it returns, so
VisibleStore asks for ``top_k`` and asks again for twice as many only when invisible
generations took places, up to eight times ``top_k``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest

from ragline.access import Readable
from ragline.lifetime import Lifetime
from ragline.models import Chunk, Hit
from ragline.retrieval import VisibleStore

pytestmark = pytest.mark.anyio
ALL = Readable.everything()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Ranked:
    """A vector store whose every search returns the first ``top_k`` of ``hits``."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits
        self.asked: list[int] = []

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
        self.asked.append(top_k)
        return self.hits[:top_k]

    async def upsert(
        self, chunks: Sequence[Chunk], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        raise NotImplementedError

    async def delete(
        self, ids: Sequence[str], lifetime: Lifetime, *, collection: str | None = None
    ) -> None:
        raise NotImplementedError


class Switched:
    """Generation 1 of every document is switched in, except of those in ``rewritten``
    (generation 2 is)."""

    def __init__(self, rewritten: Collection[str] = ()) -> None:
        self.rewritten = set(rewritten)

    async def active(
        self, collection: str, document_ids: Sequence[str], lifetime: Lifetime
    ) -> dict[str, int]:
        await lifetime.checkpoint()
        return {d: 2 if d in self.rewritten else 1 for d in document_ids}


def hits(count: int) -> list[Hit]:
    """``count`` hits of documents d0, d1, ... in rank order, all of generation 1."""
    return [Hit(f"d{i}", 0, f"text {i}", "s", 1.0 - i / 1000, 1) for i in range(count)]


async def visible(store: Ranked, index: Switched, top_k: int) -> list[Hit]:
    with Lifetime.root("test") as lifetime:
        return await VisibleStore(store, index).search([1.0], top_k, lifetime, readable=ALL)


async def test_asks_for_top_k_when_every_hit_is_visible() -> None:
    store = Ranked(hits(100))
    found = await visible(store, Switched(), 20)
    assert [h.document_id for h in found] == [f"d{i}" for i in range(20)]
    assert store.asked == [20]


async def test_asks_for_twice_as_many_while_invisible_generations_take_places() -> None:
    # d0..d9 were rewritten (generation 2 is switched in): their generation-1 hits are
    # invisible, so 20 visible hits need 30 ranked ones: asked 20, then 40.
    store = Ranked(hits(100))
    found = await visible(store, Switched({f"d{i}" for i in range(10)}), 20)
    assert [h.document_id for h in found] == [f"d{i}" for i in range(10, 30)]
    assert store.asked == [20, 40]


async def test_stops_at_eight_times_top_k_or_when_the_store_has_no_more() -> None:
    every = {f"d{i}" for i in range(100)}
    store = Ranked(hits(100))
    assert await visible(store, Switched(every), 4) == []
    assert store.asked == [4, 8, 16, 32]
    store = Ranked(hits(10))
    found = await visible(store, Switched({"d0", "d1"}), 20)
    assert [h.document_id for h in found] == [f"d{i}" for i in range(2, 10)]
    assert store.asked == [20]  # the store had fewer than asked: nothing more to find
