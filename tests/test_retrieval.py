"""VisibleStore: what readers see of a vector store, and how many hits it asks for; and
find_passages, which runs BM25 beside the query's embedding and dense search.

The store under it is a list of hits in rank order; the generation index says which
generation of each document is switched in. Milvus Lite pays for every hit it returns, so
VisibleStore asks for ``top_k`` and asks again for twice as many only when invisible
generations took places, up to eight times ``top_k``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import anyio
import anyio.lowlevel
import pytest

from ragline.access import Readable
from ragline.errors import UpstreamError
from ragline.lifetime import Cause, Lifetime
from ragline.models import Chunk, Hit
from ragline.providers.memory import MemoryStore
from ragline.retrieval import VisibleStore, find_passages

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

    async def settle(self, lifetime: Lifetime, *, collection: str | None = None) -> None:
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


# -- find_passages ----------------------------------------------------------------------------


class Gate:
    """An embedder and a keyword index that meet: the embedding waits until BM25 has
    started, so the search finishes only when the two run at once. Either side can fail,
    or wait for ever; what each saw is kept."""

    model, dimensions = "gate", 2

    def __init__(
        self, *, embed_fails: bool = False, bm25_fails: bool = False, hang: bool = False
    ) -> None:
        self.bm25_started = anyio.Event()
        self.embed_fails, self.bm25_fails, self.hang = embed_fails, bm25_fails, hang
        self.cancelled: list[str] = []

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: str = "document"
    ) -> list[list[float]]:
        try:
            await self.bm25_started.wait()
            if self.embed_fails:
                raise UpstreamError("the embedder went away")
            if self.bm25_fails or self.hang:
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append("embed")
            raise
        return [[1.0, 0.0] for _ in texts]

    async def search(
        self,
        query: str,
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]:
        self.bm25_started.set()
        try:
            if self.bm25_fails:
                await anyio.lowlevel.checkpoint()
                raise UpstreamError("the keyword index went away")
            if self.embed_fails or self.hang:
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append("bm25")
            raise
        return [Hit("lexical", 0, "text", "s", 1.0, 0, bm25=1.0)]


async def passages_of(gate: Gate, lifetime: Lifetime) -> list[Hit] | None:
    """The hits, or None when the lifetime was cancelled (its scope ends the search)."""
    store = MemoryStore()
    dense = Chunk(
        id="c", document_id="dense", chunk_index=0, text="t", source="s", vector=[1.0, 0.0]
    )
    found: list[Hit] | None = None
    with lifetime:
        await store.upsert([dense], lifetime)
        found, vector = await find_passages(
            "q",
            4,
            lifetime,
            embedder=gate,
            store=store,
            keywords=gate,
            readable=ALL,
            collection=None,
        )
        assert vector == [1.0, 0.0]
    return found


async def test_bm25_runs_beside_the_embedding_and_both_are_fused() -> None:
    with anyio.fail_after(30):  # sequential, the embedding would wait for ever
        found = await passages_of(Gate(), Lifetime.root("test"))
    assert found is not None
    assert sorted(h.document_id for h in found) == ["dense", "lexical"]


@pytest.mark.parametrize(("side", "other"), [("embed", "bm25"), ("bm25", "embed")])
async def test_a_failing_side_raises_its_own_error_and_cancels_the_other(
    side: str, other: str
) -> None:
    gate = Gate(embed_fails=side == "embed", bm25_fails=side == "bm25")
    with anyio.fail_after(30), pytest.raises(UpstreamError, match="went away"):
        await passages_of(gate, Lifetime.root("test"))  # itself, not an ExceptionGroup
    assert gate.cancelled == [other]


async def test_a_cancelled_lifetime_stops_both_sides() -> None:
    gate = Gate(hang=True)
    lifetime = Lifetime.root("test")

    async def leave() -> None:
        await gate.bm25_started.wait()
        lifetime.cancel(Cause.CLIENT_DISCONNECTED, "gone")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(leave)
            assert await passages_of(gate, lifetime) is None
    assert sorted(gate.cancelled) == ["bm25", "embed"]
