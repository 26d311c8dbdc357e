"""Ingestion with real MiniLM embeddings and real Milvus Lite: batch-boundary stops,
document-atomic visibility, idempotent reruns, and recovery after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from ragline import Cause, Lifetime
from ragline.access import Readable
from ragline.chunking import Chunker, minilm_tokenizer
from ragline.documents import Document, load_all
from ragline.ingestion import Ingestor, Stop
from ragline.providers.milvus import MilvusStore
from ragline.providers.minilm import MiniLMEmbedder
from ragline.providers.sqlite import SqliteRecords
from ragline.retrieval import VisibleStore
from ragline.threads import ThreadBridge

pytestmark = pytest.mark.anyio

WORDS = [
    "heron",
    "river",
    "reed",
    "fish",
    "water",
    "stone",
    "light",
    "wind",
    "marsh",
    "feather",
    "wing",
    "dawn",
]

ALL = Readable.everything()


def text(seed: int, words: int = 120) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] + str(i % 10) for i in range(words))


def corpus(version: int, count: int = 6) -> list[Document]:
    return [
        Document(f"doc{i}", f"v{version} " + text(i + version), f"doc{i}.txt", {})
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def minilm() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder(ThreadBridge())
    with Lifetime.root("load") as lifetime:
        await embedder.open(lifetime)
    return embedder


class Counting:
    """The real embedder, counting its calls; ``hook`` runs before each call."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.model = inner.model
        self.dimensions = inner.dimensions
        self.calls = 0
        self.texts = 0
        self.hook: Callable[[int], Awaitable[None]] | None = None

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: str = "document"
    ) -> list[list[float]]:
        self.calls += 1
        self.texts += len(texts)
        if self.hook is not None:
            await self.hook(self.calls)
        return await self.inner.embed(texts, lifetime)


class Rig:
    def __init__(self, folder: Path, embedder: Counting) -> None:
        self.bridge = ThreadBridge()
        self.embedder = embedder
        self.store = MilvusStore(self.bridge, uri=str(folder / "milvus.db"), dimensions=384)
        self.records = SqliteRecords(folder / "records.sqlite", self.bridge)
        self.chunker = Chunker(minilm_tokenizer(), size=32, overlap=4)
        self.ingestor = Ingestor(
            embedder=embedder,
            store=self.store,
            records=self.records,
            bridge=self.bridge,
            chunker=self.chunker,
            batch_size=4,
        )
        self.visible = VisibleStore(self.store, self.records)

    async def run(self, documents: list[Document], lifetime: Lifetime, **kw: Any) -> Any:
        return await self.ingestor.run(documents, lifetime, collection="default", owner="t", **kw)

    async def rows(self) -> list[dict[str, Any]]:
        """Everything the vector store holds for the collection (test-only look)."""
        client = self.store._client

        def query() -> list[dict[str, Any]]:
            if not client.has_collection("default"):
                return []
            client.load_collection("default")  # a reopened Lite file starts released
            return list(
                client.query(
                    "default",
                    filter="chunk_index >= 0",
                    output_fields=["id", "document_id", "chunk_index", "generation", "text"],
                )
            )

        return await anyio.to_thread.run_sync(query)

    async def assert_exact(self, expected: list[Document]) -> None:
        """The store holds exactly the active generation of every expected document, each
        chunk once, and nothing else."""
        rows = await self.rows()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), "duplicate chunk ids"
        active = self.records.file.documents("default")
        assert set(active) == {d.id for d in expected}
        for document in expected:
            record = active[document.id]
            mine = sorted(
                (r for r in rows if r["document_id"] == document.id), key=lambda r: r["chunk_index"]
            )
            assert {r["generation"] for r in mine} == {record.generation}, "stale generation"
            assert [r["chunk_index"] for r in mine] == list(range(record.chunks))
            assert [r["text"] for r in mine] == [c.text for c in self.chunker.split(document.text)]
        assert len(rows) == sum(r.chunks for r in active.values())


@pytest.fixture
async def rig(tmp_path: Path, minilm: MiniLMEmbedder) -> AsyncIterator[Rig]:
    made = Rig(tmp_path, Counting(minilm))
    with Lifetime.root("open") as lifetime:
        await made.store.open(lifetime)
    yield made
    await made.store.aclose()
    made.records.close()


def visible_version(
    rows: list[dict[str, Any]], records: SqliteRecords, document_id: str
) -> set[str]:
    generation = records.file.documents("default")[document_id].generation
    return {
        r["text"][:2]
        for r in rows
        if r["document_id"] == document_id
        and r["generation"] == generation
        and r["chunk_index"] == 0
    }


async def test_a_stop_ends_at_the_next_batch_boundary_and_no_document_is_mixed(rig: Rig) -> None:
    with Lifetime.root() as lifetime:
        await rig.run(corpus(1), lifetime)
    rig.embedder.calls = 0
    stop = Stop()

    async def stop_during_third(call: int) -> None:
        if call == 3:
            stop.request(Cause.EXPLICIT, "test")

    rig.embedder.hook = stop_during_third
    with Lifetime.root() as lifetime:
        progress = await rig.run(corpus(2), lifetime, stop=stop)
    assert progress.stopped is not None
    assert rig.embedder.calls == 3, "embedded past the boundary after the stop"
    rows = await rig.rows()
    versions = {d.id: visible_version(rows, rig.records, d.id) for d in corpus(2)}
    assert all(v in ({"v1"}, {"v2"}) for v in versions.values()), versions
    assert {"v1"} in versions.values()
    assert {"v2"} in versions.values()
    rig.embedder.hook = None
    with Lifetime.root() as lifetime:  # the rerun finishes the job
        await rig.run(corpus(2), lifetime)
    await rig.assert_exact(corpus(2))


async def test_a_hard_cancel_abandons_the_batch_in_flight_without_damage(rig: Rig) -> None:
    with Lifetime.root() as lifetime:
        await rig.run(corpus(1), lifetime)
    root = Lifetime.root()

    async def cancel_during_fourth(call: int) -> None:
        if call == 4:
            root.cancel(Cause.EXPLICIT, "second Ctrl-C")
            await anyio.sleep_forever()

    rig.embedder.hook = cancel_during_fourth
    rig.embedder.calls = 0
    with anyio.fail_after(60), root:
        await rig.run(corpus(2), root)
    assert root.reason is not None
    rows = await rig.rows()
    for document in corpus(2):
        assert visible_version(rows, rig.records, document.id) in ({"v1"}, {"v2"})
    rig.embedder.hook = None
    with Lifetime.root() as lifetime:
        await rig.run(corpus(2), lifetime)
    await rig.assert_exact(corpus(2))


async def test_rerunning_an_unchanged_corpus_embeds_nothing(rig: Rig) -> None:
    with Lifetime.root() as lifetime:
        first = await rig.run(corpus(1), lifetime)
    assert first.documents_done == 6
    rig.embedder.calls = 0
    with Lifetime.root() as lifetime:
        again = await rig.run(corpus(1), lifetime)
    assert rig.embedder.calls == 0
    assert again.documents_skipped == 6
    await rig.assert_exact(corpus(1))


async def test_prune_removes_documents_that_vanished(rig: Rig) -> None:
    with Lifetime.root() as lifetime:
        await rig.run(corpus(1), lifetime)
        progress = await rig.run(corpus(1)[:4], lifetime, prune=True)
    assert progress.documents_pruned == 2
    await rig.assert_exact(corpus(1)[:4])


async def test_a_changed_document_is_swapped_atomically_under_concurrent_queries(
    rig: Rig,
) -> None:
    long_v1 = [Document("big", "v1 " + text(1, 400), "big.txt", {})]
    long_v2 = [Document("big", "v2 " + text(2, 400), "big.txt", {})]
    with Lifetime.root() as lifetime:
        await rig.run(long_v1, lifetime)
    (probe,) = await rig.embedder.inner.embed(["heron river"], Lifetime.root())
    seen: list[set[int]] = []
    raw_mixed = 0
    writing = anyio.Event()

    async def query_between_batches(call: int) -> None:
        nonlocal raw_mixed
        writing.set()
        with Lifetime.root() as lifetime:
            hits = await rig.visible.search(probe, 50, lifetime, readable=ALL)
            raw = await rig.store.search(probe, 50, lifetime, readable=ALL)
        seen.append({h.generation for h in hits})
        raw_mixed += len({h.generation for h in raw}) > 1

    rig.embedder.hook = query_between_batches
    with Lifetime.root() as lifetime:
        await rig.run(long_v2, lifetime)
    rig.embedder.hook = None
    with Lifetime.root() as lifetime:
        after = await rig.visible.search(probe, 50, lifetime, readable=ALL)
    assert len(seen) >= 3, "the queries did not interleave with the write"
    assert all(len(generations) == 1 for generations in seen), seen
    assert raw_mixed > 0, "the raw store never held both generations: the test proves nothing"
    assert {h.generation for h in after} == {
        rig.records.file.documents("default")["big"].generation
    }
    await rig.assert_exact(long_v2)


INGEST_ENV = {
    "RAGLINE_INGEST_BATCH_SIZE": "2",
    "RAGLINE_CHUNK_TOKENS": "24",
    "RAGLINE_CHUNK_OVERLAP": "4",
}


def switched(database: Path) -> int:
    try:
        with sqlite3.connect(database) as db:
            return int(db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])
    except sqlite3.Error:
        return 0


async def test_kill_9_then_a_rerun_gives_exactly_the_expected_chunks(
    tmp_path: Path, minilm: MiniLMEmbedder
) -> None:
    source = tmp_path / "corpus"
    source.mkdir()
    for i in range(12):
        (source / f"doc{i}.txt").write_text(text(i, 150))
    data = tmp_path / "data"
    env = {**os.environ, **INGEST_ENV, "RAGLINE_DATA_DIR": str(data)}
    command = [sys.executable, "-m", "ragline", "ingest", str(source)]
    process = await anyio.open_process(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with anyio.fail_after(120):
            while switched(data / "records.sqlite") < 3:
                await anyio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    done_before = switched(data / "records.sqlite")
    assert 3 <= done_before < 12, "the kill did not land mid-run"
    rerun = await anyio.run_process(command, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-800:]
    rig = Rig(data, Counting(minilm))
    rig.chunker = Chunker(minilm_tokenizer(), size=24, overlap=4)
    with Lifetime.root() as lifetime:
        await rig.store.open(lifetime)
    try:
        documents, problems = load_all([source])
        assert not problems
        await rig.assert_exact(documents)
    finally:
        await rig.store.aclose()
        rig.records.close()


async def test_a_first_job_stopped_part_way_lists_its_collection_with_its_whole_documents(
    rig: Rig,
) -> None:
    stop = Stop()

    async def stop_during_third(call: int) -> None:
        if call == 3:
            stop.request(Cause.EXPLICIT, "test")

    rig.embedder.hook = stop_during_third
    with Lifetime.root() as lifetime:
        progress = await rig.run(corpus(1), lifetime, stop=stop)
        listed = await rig.records.collections(lifetime)
    assert progress.stopped is not None
    assert 0 < progress.documents_done < len(corpus(1))
    # The documents switched in before the stop are there to search: so is their collection.
    assert [(c["name"], c["documents"]) for c in listed] == [("default", progress.documents_done)]
