"""MilvusStore on Milvus Lite in a temporary file, and on a Milvus server (``milvus-lite
server`` in its own process): the VectorStore conformance suite on both, then
what only Milvus has (a file that outlives the client, VARCHAR limits, a fixed dimension).

Each test opens its own Milvus Lite file (about a second); asyncio only.

Milvus Lite runs in-process: pymilvus starts one server per file, which holds the file's
lock until it is released; ``MilvusClient.close()`` alone does not release it, so
``MilvusStore.aclose()`` does, and a new store on the file is a restarted server.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from conftest import milvus_server
from ragline import Chunk, InvalidRequest, Lifetime, ThreadBridge
from ragline.providers.milvus import MilvusStore
from store_conformance import DIM, StoreConformance, basis, chunk, search, upsert

DEFAULT = "shelf"
MAX_TEXT_BYTES = 65_535


async def opened(uri: str) -> MilvusStore:
    store = MilvusStore(ThreadBridge(), uri=uri, dimensions=DIM, default_collection=DEFAULT)
    with Lifetime.root("test") as lifetime:
        await store.open(lifetime)
    assert not lifetime.cancelled
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MilvusStore]:
    store = await opened(str(tmp_path / "milvus.db"))
    try:
        yield store
    finally:
        await store.aclose()


class TestMilvusStore(StoreConformance):
    """Milvus Lite passes the whole contract."""

    default_collection = DEFAULT


class TestMilvusServerStore(StoreConformance):
    """A Milvus server (``milvus-lite server`` in its own process, reached over gRPC at an
    ``http://`` URI) passes the same contract."""

    default_collection = DEFAULT

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[MilvusStore]:
        async with milvus_server(tmp_path / "server") as uri:
            store = await opened(uri)
            assert not store.is_lite
            try:
                yield store
            finally:
                await store.aclose()


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
async def test_a_file_written_at_another_dimension_is_invalid(tmp_path: Path) -> None:
    """Reopening a file with a different ``dimensions`` is rejected as invalid, not a crash."""
    uri = str(tmp_path / "milvus.db")
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
