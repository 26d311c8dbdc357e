"""The :class:`~ragline.providers.VectorStore` contract, as a suite any store must pass.

A store's test module subclasses :class:`StoreConformance` and supplies a ``store``
fixture (module- or class-level) returning a fresh, opened, empty store for vectors of
:data:`DIM` dimensions, whose default collection is named ``default_collection``::

    @pytest.fixture
    async def store(tmp_path: Path) -> MyStore:
        return MyStore(dimensions=DIM, default_collection="shelf")

    class TestMyStore(StoreConformance):
        default_collection = "shelf"

Vectors are deterministic. Every call runs under a fresh root lifetime, except where a
test cancels one on purpose. What a call has written is visible to the next search at
once (read your writes): a server store reads at its strongest consistency (Milvus:
``Strong``, where a server's default, ``Bounded``, fails this suite).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest

from ragline import Cause, Chunk, Hit, Lifetime
from ragline.access import Readable
from ragline.providers import VectorStore

__all__ = ["DIM", "StoreConformance", "basis", "chunk", "delete", "search", "upsert"]

DIM = 8
TOL = 1e-4  # float32 stores: scores agree with exact cosine to this

ALL = Readable.everything()


# -- vectors and chunks ------------------------------------------------------------------


def basis(axis: int, scale: float = 1.0) -> list[float]:
    """``scale`` times the unit vector along ``axis``."""
    vector = [0.0] * DIM
    vector[axis] = scale
    return vector


def rotated(degrees: float, scale: float = 1.0) -> list[float]:
    """A vector at ``degrees`` from axis 0 towards axis 1: its cosine to axis 0 is known."""
    vector = [0.0] * DIM
    vector[0] = scale * math.cos(math.radians(degrees))
    vector[1] = scale * math.sin(math.radians(degrees))
    return vector


def chunk(
    chunk_id: str,
    vector: Sequence[float],
    *,
    text: str | None = None,
    document_id: str | None = None,
    chunk_index: int = 0,
    source: str | None = None,
) -> Chunk:
    """A chunk whose fields default to values derived from its id."""
    return Chunk(
        id=chunk_id,
        document_id=document_id if document_id is not None else f"doc-{chunk_id}",
        chunk_index=chunk_index,
        text=text if text is not None else f"text of {chunk_id}",
        source=source if source is not None else f"{chunk_id}.md",
        vector=list(vector),
    )


# -- calls under a fresh lifetime ----------------------------------------------------------


async def upsert(
    store: VectorStore, chunks: Sequence[Chunk], *, collection: str | None = None
) -> None:
    with Lifetime.root("test") as lifetime:
        await store.upsert(chunks, lifetime, collection=collection)
    assert not lifetime.cancelled


async def search(
    store: VectorStore,
    vector: Sequence[float],
    top_k: int,
    *,
    collection: str | None = None,
    readable: Readable = ALL,
) -> list[Hit]:
    hits: list[Hit] | None = None
    with Lifetime.root("test") as lifetime:
        hits = await store.search(vector, top_k, lifetime, readable=readable, collection=collection)
    assert hits is not None, "search did not return"
    return hits


async def settle(store: VectorStore, *, collection: str | None = None) -> None:
    with Lifetime.root("test") as lifetime:
        await store.settle(lifetime, collection=collection)
    assert not lifetime.cancelled


async def delete(store: VectorStore, ids: Sequence[str], *, collection: str | None = None) -> None:
    with Lifetime.root("test") as lifetime:
        await store.delete(ids, lifetime, collection=collection)
    assert not lifetime.cancelled


def cancelled_lifetime() -> Lifetime:
    """A root lifetime cancelled before anything runs under it."""
    root = Lifetime.root("gone")
    root.cancel(Cause.CLIENT_DISCONNECTED, "owner left before the call")
    return root


# -- assertions ------------------------------------------------------------------------------


def key(item: Chunk | Hit) -> tuple[str, int]:
    """What identifies a hit: hits carry no chunk id."""
    return (item.document_id, item.chunk_index)


def assert_same_fields(hit: Hit, stored: Chunk) -> None:
    """The hit carries the chunk's document id, index, source and text exactly."""
    got = (hit.document_id, hit.chunk_index, hit.source, hit.text)
    want = (stored.document_id, stored.chunk_index, stored.source, stored.text)
    assert got == want


def assert_descending(hits: Sequence[Hit]) -> None:
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True), f"scores not best first: {scores}"


# -- the suite -------------------------------------------------------------------------------

# Six chunks at known angles from axis 0, stored out of order and at various lengths, so
# a query along axis 0 must rank them by angle with scores cos(angle).
ANGLES = {"r45": 45.0, "r0": 0.0, "r75": 75.0, "r15": 15.0, "r60": 60.0, "r30": 30.0}
SCALES = {"r45": 3.0, "r0": 0.25, "r75": 7.5, "r15": 1.0, "r60": 0.5, "r30": 12.0}
BY_ANGLE = sorted(ANGLES, key=ANGLES.__getitem__)


def ranked_chunks() -> list[Chunk]:
    return [
        chunk(
            name,
            rotated(ANGLES[name], SCALES[name]),
            text=f"chunk {name}: naïve café, 東京 and 🙂",
            document_id=f"doc/{name}",
            chunk_index=int(ANGLES[name]),
            source=f"sources/ü-{name}.md",
        )
        for name in ANGLES
    ]


@pytest.mark.anyio
class StoreConformance:
    """The VectorStore contract. Subclasses supply the ``store`` fixture."""

    default_collection = "default"
    """The name of the default collection of the store the fixture builds."""

    async def test_search_of_a_missing_collection_finds_nothing(self, store: VectorStore) -> None:
        """Searching a collection that does not exist returns [] (no error)."""
        assert await search(store, basis(0), 5, collection="never_created") == []
        assert await search(store, basis(0), 5) == []

    async def test_store_satisfies_the_protocol(self, store: VectorStore) -> None:
        """The store is a VectorStore by the runtime-checkable protocol."""
        assert isinstance(store, VectorStore)

    async def test_search_ranks_by_cosine_best_first(self, store: VectorStore) -> None:
        """Hits come best first, scores descending, each score the cosine to the query."""
        chunks = ranked_chunks()
        await upsert(store, chunks)
        hits = await search(store, basis(0, scale=2.5), 10)
        assert [hit.document_id for hit in hits] == [f"doc/{name}" for name in BY_ANGLE]
        assert_descending(hits)
        for hit, name in zip(hits, BY_ANGLE, strict=True):
            assert hit.score == pytest.approx(math.cos(math.radians(ANGLES[name])), abs=TOL)

    async def test_top_k_is_respected(self, store: VectorStore) -> None:
        """top_k below the stored count gives the best top_k; above it gives all."""
        await upsert(store, ranked_chunks())
        top3 = await search(store, basis(0), 3)
        assert [hit.document_id for hit in top3] == [f"doc/{name}" for name in BY_ANGLE[:3]]
        assert len(await search(store, basis(0), 1)) == 1
        everything = await search(store, basis(0), 50)
        assert len(everything) == len(ANGLES)
        assert_descending(everything)

    async def test_search_returns_only_readable_acl_classes_and_fills_top_k(
        self, store: VectorStore
    ) -> None:
        # 30 chunks of a class the reader may not read lie nearer the query than the 6
        # it may: the filter is in the search, so the best 5 readable ones come back.
        near = [replace(chunk(f"x{i}", rotated(i * 0.1)), acl=7) for i in range(30)]
        far = [replace(chunk(f"r{i}", rotated(40 + i)), acl=(0 if i % 2 else 3)) for i in range(6)]
        await upsert(store, near + far)
        readable = Readable(frozenset({0, 3}))
        hits = await search(store, basis(0), 5, readable=readable)
        assert [h.document_id for h in hits] == [f"doc-r{i}" for i in range(5)]
        only_zero = await search(store, basis(0), 10, readable=Readable(frozenset({0})))
        assert {h.document_id for h in only_zero} == {"doc-r1", "doc-r3", "doc-r5"}
        assert len(await search(store, basis(0), 50, readable=ALL)) == 36

    async def test_a_selective_filter_still_fills_top_k(self, store: VectorStore) -> None:
        # 1% of the rows may be read (a filtered HNSW walk meets too few of them): the
        # search still returns top_k of them, the nearest first.
        rng = random.Random(3)
        others = [
            replace(chunk(f"o{i}", [rng.uniform(-1, 1) for _ in range(DIM)]), acl=9)
            for i in range(3_000)
        ]
        mine = [replace(chunk(f"m{i}", rotated(i * 2.0)), acl=4) for i in range(30)]
        for start in range(0, len(others), 500):
            await upsert(store, others[start : start + 500])
        await upsert(store, mine)
        hits = await search(store, basis(0), 25, readable=Readable(frozenset({4})))
        assert [h.document_id for h in hits] == [f"doc-m{i}" for i in range(25)]
        assert_descending(hits)

    async def test_hits_carry_the_stored_fields_exactly(self, store: VectorStore) -> None:
        """document_id, chunk_index, source and text come back exactly as stored."""
        chunks = ranked_chunks()
        await upsert(store, chunks)
        hits = await search(store, basis(0), len(chunks))
        stored = {key(c): c for c in chunks}
        assert sorted(key(hit) for hit in hits) == sorted(stored)
        for hit in hits:
            assert_same_fields(hit, stored[key(hit)])
            assert isinstance(hit.chunk_index, int)
            assert isinstance(hit.score, float)

    async def test_scores_are_cosine_similarity(self, store: VectorStore) -> None:
        """Identical direction scores 1, orthogonal 0, opposite -1, whatever the lengths."""
        await upsert(
            store,
            [
                chunk("same", basis(2, scale=5.0)),
                chunk("orthogonal", basis(3, scale=0.1)),
                chunk("opposite", basis(2, scale=-2.0)),
            ],
        )
        hits = {hit.document_id: hit.score for hit in await search(store, basis(2, 0.3), 3)}
        assert hits == {
            "doc-same": pytest.approx(1.0, abs=TOL),
            "doc-orthogonal": pytest.approx(0.0, abs=TOL),
            "doc-opposite": pytest.approx(-1.0, abs=TOL),
        }

    async def test_unnormalised_vectors_compare_by_cosine(self, store: VectorStore) -> None:
        """A long vector at a wide angle does not beat a short one at a narrow angle."""
        near, far = rotated(10.0, scale=0.01), rotated(50.0, scale=1000.0)
        await upsert(store, [chunk("near", near), chunk("far", far)])
        hits = await search(store, [7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 2)
        assert [hit.document_id for hit in hits] == ["doc-near", "doc-far"]
        assert hits[0].score == pytest.approx(math.cos(math.radians(10.0)), abs=TOL)
        assert hits[1].score == pytest.approx(math.cos(math.radians(50.0)), abs=TOL)

    async def test_upserting_an_existing_id_replaces_the_chunk(self, store: VectorStore) -> None:
        """The same id again replaces text, fields and vector; no duplicate hit remains."""
        await upsert(store, [chunk("a", basis(0), text="first"), chunk("b", basis(1))])
        replacement = chunk(
            "a", basis(2), text="second", document_id="doc-a2", chunk_index=7, source="new.md"
        )
        await upsert(store, [replacement])
        hits = await search(store, basis(2), 10)
        assert len(hits) == 2
        assert_same_fields(hits[0], replacement)
        assert hits[0].score == pytest.approx(1.0, abs=TOL)
        assert all(hit.text != "first" for hit in hits)
        # The old vector went with the old text.
        old = {hit.document_id: hit.score for hit in await search(store, basis(0), 10)}
        assert old["doc-a2"] == pytest.approx(0.0, abs=TOL)

    async def test_the_last_of_repeated_ids_in_one_upsert_wins(self, store: VectorStore) -> None:
        """An id twice in one batch is stored once, as its last occurrence."""
        await upsert(store, [chunk("a", basis(0), text="one"), chunk("a", basis(1), text="two")])
        hits = await search(store, basis(1), 10)
        assert [(hit.text, round(hit.score, 3)) for hit in hits] == [("two", 1.0)]

    async def test_delete_removes_chunks_and_ignores_unknown_ids(self, store: VectorStore) -> None:
        """delete() removes the named chunks; unknown ids are no error."""
        await upsert(store, [chunk(name, basis(i)) for i, name in enumerate("abcd")])
        await delete(store, ["b", "no-such-id", "d"])
        hits = await search(store, basis(0), 10)
        assert sorted(hit.document_id for hit in hits) == ["doc-a", "doc-c"]
        await delete(store, ["b", "never"])  # already gone: still no error
        await delete(store, [])
        assert len(await search(store, basis(0), 10)) == 2

    async def test_settle_keeps_every_write_and_its_order(self, store: VectorStore) -> None:
        """settle() after writes (and of a missing collection) changes no search's hits;
        writes after it are found as well."""
        await upsert(store, [chunk(name, rotated(10.0 * i)) for i, name in enumerate("abcd")])
        before = [(h.document_id, round(h.score, 3)) for h in await search(store, basis(0), 10)]
        await settle(store)
        await settle(store, collection="never_created")
        after = [(h.document_id, round(h.score, 3)) for h in await search(store, basis(0), 10)]
        assert after == before
        assert [d for d, _ in after] == ["doc-a", "doc-b", "doc-c", "doc-d"]
        await upsert(store, [chunk("e", basis(0))])
        await delete(store, ["a"])
        await settle(store)
        hits = await search(store, basis(0), 10)
        assert [h.document_id for h in hits] == ["doc-e", "doc-b", "doc-c", "doc-d"]

    async def test_delete_in_a_missing_collection_is_no_error(self, store: VectorStore) -> None:
        """Deleting from a collection that does not exist does nothing."""
        await delete(store, ["a"], collection="never_created")
        await delete(store, ["a"])
        assert await search(store, basis(0), 5, collection="never_created") == []

    async def test_collections_are_isolated(self, store: VectorStore) -> None:
        """A chunk lives in one collection; the same id elsewhere is another chunk."""
        await upsert(store, [chunk("x", basis(0), text="in alpha")], collection="alpha")
        await upsert(store, [chunk("x", basis(0), text="in beta")], collection="beta")
        await upsert(store, [chunk("y", basis(1))], collection="beta")
        alpha = await search(store, basis(0), 10, collection="alpha")
        beta = await search(store, basis(0), 10, collection="beta")
        assert [hit.text for hit in alpha] == ["in alpha"]
        assert sorted(hit.text for hit in beta) == ["in beta", "text of y"]
        assert await search(store, basis(0), 10) == []  # the default collection is untouched
        await delete(store, ["x"], collection="alpha")
        assert await search(store, basis(0), 10, collection="alpha") == []
        assert len(await search(store, basis(0), 10, collection="beta")) == 2

    async def test_none_means_the_default_collection(self, store: VectorStore) -> None:
        """collection=None and the default collection's name are the same collection."""
        name = self.default_collection
        await upsert(store, [chunk("implicit", basis(0))])
        await upsert(store, [chunk("explicit", basis(1))], collection=name)
        by_none = await search(store, basis(0), 10)
        by_name = await search(store, basis(0), 10, collection=name)
        assert sorted(hit.document_id for hit in by_none) == ["doc-explicit", "doc-implicit"]
        assert by_name == by_none
        await delete(store, ["explicit"])
        assert [hit.document_id for hit in await search(store, basis(0), 10, collection=name)] == [
            "doc-implicit"
        ]
        assert await search(store, basis(0), 10, collection="other") == []

    async def test_upserting_nothing_is_a_no_op(self, store: VectorStore) -> None:
        """An empty upsert writes nothing and changes nothing."""
        await upsert(store, [])
        await upsert(store, [], collection="alpha")
        assert await search(store, basis(0), 5) == []
        assert await search(store, basis(0), 5, collection="alpha") == []
        await upsert(store, [chunk("a", basis(0))])
        await upsert(store, [])
        assert [hit.document_id for hit in await search(store, basis(0), 5)] == ["doc-a"]

    async def test_upsert_under_a_cancelled_lifetime_writes_nothing(
        self, store: VectorStore
    ) -> None:
        """An upsert whose owner is already gone never returns and stores nothing."""
        returned = False
        root = cancelled_lifetime()
        with root:
            await store.upsert([chunk("ghost", basis(0))], root)
            returned = True
        assert not returned, "upsert returned under a cancelled lifetime"
        assert await search(store, basis(0), 5) == []
        root = cancelled_lifetime()
        with root:
            await store.upsert([chunk("ghost", basis(0))], root, collection="alpha")
            returned = True
        assert not returned
        assert await search(store, basis(0), 5, collection="alpha") == []

    async def test_delete_under_a_cancelled_lifetime_removes_nothing(
        self, store: VectorStore
    ) -> None:
        """A delete whose owner is already gone never returns and removes nothing."""
        await upsert(store, [chunk("kept", basis(0))])
        returned = False
        root = cancelled_lifetime()
        with root:
            await store.delete(["kept"], root)
            returned = True
        assert not returned, "delete returned under a cancelled lifetime"
        assert [hit.document_id for hit in await search(store, basis(0), 5)] == ["doc-kept"]

    async def test_search_under_a_cancelled_lifetime_does_not_return(
        self, store: VectorStore
    ) -> None:
        """A search whose owner is already gone is cancelled, not answered."""
        await upsert(store, [chunk("a", basis(0))])
        returned = False
        root = cancelled_lifetime()
        with root:
            await store.search(basis(0), 5, root, readable=ALL)
            returned = True
        assert not returned, "search returned under a cancelled lifetime"

    async def test_a_large_batch_round_trips(self, store: VectorStore) -> None:
        """300 chunks in one upsert all come back, each its own nearest neighbour."""
        rng = random.Random(20240601)
        chunks = [
            chunk(
                f"c{i:03d}",
                [rng.gauss(0.0, 1.0) for _ in range(DIM)],
                document_id=f"doc-{i // 10:02d}",
                chunk_index=i % 10,
                text=f"chunk {i} " + "lorem ipsum " * (i % 7),
            )
            for i in range(300)
        ]
        await upsert(store, chunks)
        stored = {key(c): c for c in chunks}
        hits = await search(store, basis(0), 300)
        assert len(hits) == 300
        assert_descending(hits)
        assert {key(hit) for hit in hits} == set(stored)
        for hit in hits:
            assert_same_fields(hit, stored[key(hit)])
        for probe in chunks[::37]:
            best = await search(store, probe.vector, 3)
            assert key(best[0]) == key(probe)
            assert best[0].score == pytest.approx(1.0, abs=TOL)
