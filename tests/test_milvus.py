"""MilvusStore on the three Milvus a deployment may use, each its own process or not:
Milvus Lite in a temporary file, ``milvus-lite server`` (a development server in its own
process), and the real Milvus 2.3.5 standalone server (``milvus-server`` from the
``milvus`` wheel, started once per session). The VectorStore conformance suite runs on all
three, then what only Milvus has (a file that outlives the client, VARCHAR limits, a
fixed dimension) and what Milvus 2.3 lacks.

Each Lite test opens its own file (about a second), each ``milvus-lite server`` test its
own server, each standalone test its own database on the session's server; asyncio only.

Milvus Lite runs in-process: pymilvus starts one server per file, which holds the file's
lock until it is released; ``MilvusClient.close()`` alone does not release it, so
``MilvusStore.aclose()`` does, and a new store on the file is a restarted server.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import milvus_server
from ragline import Chunk, InvalidRequest, Lifetime, ThreadBridge, UpstreamError
from ragline.access import Readable
from ragline.providers.milvus import MilvusStore
from store_conformance import DIM, StoreConformance, basis, chunk, search, upsert

DEFAULT = "shelf"
MAX_TEXT_BYTES = 65_535
KINDS = ("lite", "lite_server", "standalone")
"""Milvus Lite in a file, ``milvus-lite server``, the real Milvus 2.3.5 standalone server."""


async def opened(uri: str) -> MilvusStore:
    store = MilvusStore(ThreadBridge(), uri=uri, dimensions=DIM, default_collection=DEFAULT)
    with Lifetime.root("test") as lifetime:
        await store.open(lifetime)
    assert not lifetime.cancelled
    return store


@asynccontextmanager
async def milvus_uri(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, empty Milvus of ``kind``: its URI."""
    if kind == "lite":
        yield str(tmp_path / "milvus.db")
    elif kind == "lite_server":
        async with milvus_server(tmp_path / "server") as uri:
            yield uri
    else:
        yield request.getfixturevalue("milvus_database")


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MilvusStore]:
    async with milvus_uri(request.param, request, tmp_path) as uri:
        store = await opened(uri)
        assert store.is_lite == (request.param == "lite")
        try:
            yield store
        finally:
            await store.aclose()


class TestMilvusStore(StoreConformance):
    """Milvus Lite, ``milvus-lite server`` and Milvus 2.3.5 standalone (the last two
    reached over gRPC at an ``http://`` URI) pass the whole contract."""

    default_collection = DEFAULT


@pytest.mark.anyio
async def test_chunks_survive_closing_and_reopening_the_file(tmp_path: Path) -> None:
    """A new MilvusStore on the same file, in this process, finds what a closed one stored.

    The Lite server outlives ``aclose()`` (see below), so this is not a restart.
    """
    uri = str(tmp_path / "milvus.db")
    first = await opened(uri)
    try:
        await upsert(first, [chunk("a", basis(0)), chunk("b", basis(1))])
        await upsert(first, [chunk("c", basis(2))], collection="alpha")
    finally:
        await first.aclose()
    second = await opened(uri)
    try:
        hits = await search(second, basis(0), 10)
        assert [hit.document_id for hit in hits] == ["doc-a", "doc-b"]
        assert hits[0].text == "text of a"
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [
            hit.document_id for hit in await search(second, basis(2), 10, collection="alpha")
        ] == ["doc-c"]
    finally:
        await second.aclose()


CHILD_OPENS = """
import sys

import anyio

from ragline import Lifetime, ThreadBridge
from ragline.access import Readable
from ragline.providers.milvus import MilvusStore


async def main() -> None:
    store = MilvusStore(ThreadBridge(), uri=sys.argv[1], dimensions=int(sys.argv[2]))
    with Lifetime.root("child") as lifetime:
        await store.open(lifetime)
    await store.aclose()
    print("opened")


anyio.run(main)
"""


@pytest.mark.anyio
async def test_closing_releases_the_file_to_another_process(tmp_path: Path) -> None:
    """After aclose(), another process can open the same Milvus Lite file."""
    uri = str(tmp_path / "milvus.db")
    store = await opened(uri)
    try:
        await upsert(store, [chunk("a", basis(0))])
        await store.aclose()
        with anyio.fail_after(60):
            child = await anyio.run_process(
                [sys.executable, "-c", CHILD_OPENS, uri, str(DIM)], check=False
            )
        assert child.returncode == 0, child.stderr.decode()[-400:]
        assert child.stdout.decode().strip() == "opened"
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_chunks_survive_a_restart_of_the_lite_server(tmp_path: Path) -> None:
    """Stored chunks are found by a new store after the Lite server itself restarted."""
    uri = str(tmp_path / "milvus.db")
    first = await opened(uri)
    try:
        await upsert(first, [chunk("a", basis(0)), chunk("b", basis(1))])
    finally:
        await first.aclose()
    second = await opened(uri)
    try:
        hits = await search(second, basis(0), 10)
        assert [hit.document_id for hit in hits] == ["doc-a", "doc-b"]
    finally:
        await second.aclose()


@pytest.mark.anyio
async def test_overlong_texts_are_clipped_to_whole_utf8_characters(store: MilvusStore) -> None:
    """Texts past 65,535 UTF-8 bytes are stored as their longest whole-character prefix."""
    texts = {
        "ascii": "a" * 70_000,
        "two_byte": "é" * 40_000,  # 80,000 bytes; byte 65,535 splits a character
        "four_byte": "x" + "🙂" * 20_000,  # 80,001 bytes; 65,535 = 1 + 4 * 16,383 + 2
        "mixed": "naïve café 東京 🙂 " * 5_000,
    }
    chunks = [
        chunk(name, basis(i), text=text, source="s/" + "ü" * 1_500)
        for i, (name, text) in enumerate(texts.items())
    ]
    await upsert(store, chunks)
    hits = {hit.document_id: hit for hit in await search(store, basis(0), 10)}
    assert len(hits) == len(texts)
    for name, text in texts.items():
        stored = hits[f"doc-{name}"].text
        size = len(stored.encode())
        assert text.startswith(stored), name
        assert MAX_TEXT_BYTES - 3 <= size <= MAX_TEXT_BYTES, (name, size)
        assert len(text[len(stored)].encode()) > MAX_TEXT_BYTES - size, name  # nothing more fits
        assert hits[f"doc-{name}"].source == "s/" + "ü" * 1_023  # 2,048 bytes, clipped
    assert hits["doc-ascii"].text == "a" * MAX_TEXT_BYTES
    assert hits["doc-two_byte"].text == "é" * 32_767
    assert hits["doc-four_byte"].text == "x" + "🙂" * 16_383


@pytest.mark.anyio
async def test_a_wrong_dimension_is_invalid_and_writes_nothing(store: MilvusStore) -> None:
    """One chunk of the wrong dimension fails the whole upsert before anything is written."""
    bad = Chunk(id="bad", document_id="d", chunk_index=0, text="t", source="s", vector=[1.0] * 5)
    with pytest.raises(InvalidRequest, match="5 dimensions"):
        await upsert(store, [chunk("good", basis(0)), bad])
    assert await search(store, basis(0), 10) == []
    await upsert(store, [chunk("first", basis(1))])
    with pytest.raises(InvalidRequest, match="9 dimensions"):
        await upsert(store, [chunk("second", basis(0)), chunk("long", [1.0] * (DIM + 1))])
    assert [hit.document_id for hit in await search(store, basis(0), 10)] == ["doc-first"]


@pytest.mark.anyio
async def test_a_query_of_the_wrong_dimension_is_invalid(store: MilvusStore) -> None:
    """Searching with a vector of the wrong dimension raises InvalidRequest, as upsert does."""
    await upsert(store, [chunk("a", basis(0))])
    with pytest.raises(InvalidRequest, match="5 dimensions"):
        await search(store, [1.0] * 5, 3)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_collection_written_at_another_dimension_is_invalid(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Reopening a file (or a server's collection) with a different ``dimensions`` is
    rejected as invalid, not a crash."""
    async with milvus_uri(kind, request, tmp_path) as uri:
        first = await opened(uri)
        try:
            await upsert(first, [chunk("a", basis(0))])
        finally:
            await first.aclose()
        wider = MilvusStore(ThreadBridge(), uri=uri, dimensions=2 * DIM, default_collection=DEFAULT)
        try:
            with pytest.raises(InvalidRequest, match="dimension"):
                await upsert(wider, [chunk("b", [1.0] * (2 * DIM))])
        finally:
            await wider.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["lite_server", "standalone"])
async def test_two_writers_creating_one_collection_at_once_both_succeed(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two replicas (two clients) write the first chunks of a new collection at the same
    moment: one creates it, the other waits for its index instead of failing to load it."""
    async with milvus_uri(kind, request, tmp_path) as uri:
        stores = [await opened(uri), await opened(uri)]
        try:
            async with anyio.create_task_group() as tg:
                for i, store in enumerate(stores):
                    tg.start_soon(upsert, store, [chunk(f"c{i}", basis(i))])
            for store in stores:
                hits = await search(store, basis(0), 10)
                assert sorted(hit.document_id for hit in hits) == ["doc-c0", "doc-c1"]
        finally:
            for store in stores:
                await store.aclose()


@pytest.mark.anyio
async def test_a_collection_whose_creator_died_before_indexing_it_is_indexed(
    milvus_database: str,
) -> None:
    """A collection left without its index (its creator died between the calls) gets the
    index from the next writer, after a few seconds' wait for the creator."""
    from pymilvus import DataType, MilvusClient

    raw = MilvusClient(uri=milvus_database)
    try:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        for name in ("document_id", "source", "text"):
            schema.add_field(name, DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("generation", DataType.INT64)
        raw.create_collection(DEFAULT, schema=schema)
        assert raw.list_indexes(DEFAULT) == []
    finally:
        raw.close()
    store = await opened(milvus_database)
    try:
        await upsert(store, [chunk("a", basis(0))])
        assert [hit.document_id for hit in await search(store, basis(0), 5)] == ["doc-a"]
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_server_older_than_2_3_is_refused_by_its_version(
    milvus_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus before 2.3 lacks the COSINE metric and upsert: refused at connect, with its
    version named (no such server here: the real one is made to answer as 2.2)."""
    from pymilvus import MilvusClient

    store = await opened(milvus_database)
    try:
        assert store.server_version == "v2.3.5-lite"
    finally:
        await store.aclose()
    monkeypatch.setattr(MilvusClient, "get_server_version", lambda self, **kw: "v2.2.16")
    old = MilvusStore(ThreadBridge(), uri=milvus_database, dimensions=DIM)
    try:
        with pytest.raises(UpstreamError, match=r"is v2\.2\.16: ragline needs Milvus 2\.3"):
            await upsert(old, [chunk("a", basis(0))])
    finally:
        await old.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["lite", "standalone"])
async def test_a_selective_filter_on_an_indexed_collection_still_fills_top_k(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # 20,000 rows flushed into indexed segments, 0.3% of them readable: the filtered HNSW
    # walk alone comes back short (it did on Milvus 2.3.5 here, and on Lite once its
    # segments are indexed), though 60 rows may be read; ragline's search fills top_k
    # from them, nearest first.
    dim, rng = 64, random.Random(5)

    def rows(prefix: str, count: int, acl: int) -> list[Chunk]:
        return [
            Chunk(f"{prefix}{i}", f"doc-{prefix}{i}", 0, "t", "s", vector(), acl=acl)
            for i in range(count)
        ]

    def vector() -> list[float]:
        return [rng.gauss(0, 1) for _ in range(dim)]

    others, mine = rows("o", 20_000, 9), rows("m", 60, 4)
    async with milvus_uri(kind, request, tmp_path) as uri:
        store = MilvusStore(ThreadBridge(), uri=uri, dimensions=dim)
        try:
            with Lifetime.root("test") as life:
                for start in range(0, len(others), 2_000):
                    await store.upsert(others[start : start + 2_000], life)
                await store.upsert(mine, life)
                await anyio.to_thread.run_sync(store._client.flush, "default")
                await anyio.sleep(3)  # time to index the sealed segments: the hard case
                for _ in range(5):
                    query = vector()
                    hits = await store.search(query, 20, life, readable=Readable(frozenset({4})))
                    best = sorted(mine, key=lambda c: -_cosine(query, c.vector))
                    assert [h.document_id for h in hits] == [c.document_id for c in best[:20]]
        finally:
            await store.aclose()


def _cosine(a: list[float], b: Any) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["lite", "lite_server"])
async def test_a_lite_collection_past_its_hand_over_size_warns_once(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Counted after upsert batches (never on a search): one warning when the collection
    # passes the limit, none below it, none again, and none for a Milvus server.
    async with milvus_uri(kind, request, tmp_path) as uri:
        store = MilvusStore(ThreadBridge(), uri=uri, dimensions=DIM, handover_chunks=10)
        try:
            with caplog.at_level("WARNING", logger="ragline.providers.milvus"):
                await upsert(store, [chunk(f"a{i}", basis(i % DIM)) for i in range(8)])
                await upsert(store, [chunk(f"a{i}", basis(0)) for i in range(8)])  # replaced
                assert not [r for r in caplog.records if r.name == "ragline.providers.milvus"]
                for batch in range(4):
                    await upsert(store, [chunk(f"b{batch}-{i}", basis(1)) for i in range(3)])
                await search(store, basis(0), 5)
        finally:
            await store.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.name == "ragline.providers.milvus"]
    if kind == "lite_server":
        assert warnings == []
        return
    assert len(warnings) == 1
    assert "collection 'default' holds 11 chunks" in warnings[0]
    assert "past 10" in warnings[0]
    assert "docs/DEPLOY.md" in warnings[0]


@pytest.mark.anyio
async def test_lite_searches_its_collection_in_process_as_the_client_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Lite file this process serves is searched without gRPC: the same hits, scores and
    # texts as through the client, with and without an ACL filter, short filtered
    # searches included. A server's URI, or a file nobody here serves, has no collection.
    from dataclasses import replace

    from ragline.providers import _milvus_search

    uri = str(tmp_path / "milvus.db")
    store = await opened(uri)
    rng = random.Random(3)
    try:
        rows = [
            replace(chunk(f"c{i}", [rng.gauss(0, 1) for _ in range(DIM)]), acl=i % 4)
            for i in range(200)
        ]
        await upsert(store, rows)
        assert _milvus_search.lite_collection(uri, DEFAULT) is not None
        assert _milvus_search.lite_collection("http://127.0.0.1:1", DEFAULT) is None
        assert _milvus_search.lite_collection(str(tmp_path / "other.db"), DEFAULT) is None
        probes = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(10)]
        readers = [
            Readable.everything(),
            Readable(frozenset({0})),
            Readable(frozenset({1, 3})),
            Readable(frozenset({9})),
        ]

        async def everything() -> list[list[tuple[str, float, str]]]:
            return [
                [
                    (h.document_id, round(h.score, 5), h.text)
                    for h in await search(store, v, k, readable=r)
                ]
                for v in probes
                for k in (1, 7, 60)
                for r in readers
            ]

        direct = await everything()
        monkeypatch.setattr(_milvus_search, "lite_collection", lambda uri, name: None)
        assert await everything() == direct
        assert any(direct)  # some hits
        assert not all(direct)  # and none of the class nothing has
    finally:
        await store.aclose()
