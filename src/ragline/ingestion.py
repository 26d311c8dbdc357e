"""Document-atomic, idempotent, cancellable ingestion.

Documents are chunked by the embedding model's tokens and written in batches (64 chunks by
default). The lifetime is checked at every batch boundary before the next embedding call,
and a stop requested with :meth:`Stop.request` (an API or first Ctrl-C) ends the run there;
embedding of the next batch overlaps the writing of the current one.

Visibility is per document: a changed document gets a new generation, its chunk ids are
recorded before they are written, and once all its chunks are in the store it is switched
in one transaction of the record store; the old generation is deleted afterwards. Chunks
of unswitched generations (a crash, a cancel, a second Ctrl-C) are collected by the next
run. Unchanged documents are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from .access import acl_class
from .chunking import Chunker, MarkdownContext, TextChunk
from .documents import Document, DocumentProblem
from .lifetime import CancelReason, Cause, Lifetime
from .models import Chunk
from .providers import Embedder, RecordStore, VectorStore
from .threads import CancelToken, ThreadBridge

__all__ = ["IngestProgress", "Ingestor", "Stop", "chunk_id"]

log = logging.getLogger("ragline.ingestion")


def chunk_id(
    collection: str, document_id: str, generation: int, index: int, model: str, text: str
) -> str:
    """Deterministic: the same chunk of the same generation always has the same id."""
    key = "\0".join((collection, document_id, str(generation), str(index), model, text))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Stop:
    """A stop at the next batch boundary (the current batch still finishes)."""

    def __init__(self) -> None:
        self.reason: CancelReason | None = None

    def request(self, cause: Cause, detail: str = "") -> None:
        """Ask the run to stop at the next batch boundary; the first request wins."""
        if self.reason is None:
            self.reason = CancelReason(cause, "stop", time.monotonic(), detail)


@dataclass
class IngestProgress:
    """Counts as the run goes; ``errors`` holds one entry per problem document."""

    documents_total: int = 0
    documents_done: int = 0
    documents_skipped: int = 0
    documents_pruned: int = 0
    documents_chunked: int = 0
    chunks_total: int = 0  # of the documents chunked so far
    chunks_done: int = 0
    batches: int = 0
    embedded_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    errors: list[dict[str, Any]] = field(default_factory=list)
    stopped: CancelReason | None = None

    @property
    def rate(self) -> float:
        """Chunks written per second so far."""
        elapsed = time.monotonic() - self.started
        return self.chunks_done / elapsed if elapsed > 0 else 0.0

    @property
    def chunks_expected(self) -> int:
        """All chunks of the run: counted for the documents chunked so far, estimated
        from their average for the rest (documents are chunked as the run goes)."""
        if not self.documents_chunked:
            return self.chunks_total
        per_document = self.chunks_total / self.documents_chunked
        rest = max(self.documents_total - self.documents_chunked, 0)
        return self.chunks_total + round(rest * per_document)

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, if known."""
        left = self.chunks_expected - self.chunks_done
        return left / self.rate if self.rate > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of the job API."""
        return {
            "documents": {
                "done": self.documents_done,
                "total": self.documents_total,
                "skipped": self.documents_skipped,
                "pruned": self.documents_pruned,
            },
            "chunks": {"done": self.chunks_done, "total": self.chunks_expected},
            "rate": round(self.rate, 2),
            "eta_seconds": None if self.eta is None else round(self.eta, 1),
            "errors": self.errors,
        }


@dataclass
class _Pending:
    document: Document
    generation: int
    content_hash: str
    chunks: int
    written: int = 0


class Ingestor:
    """Writes documents into a collection through an embedder and a vector store."""

    def __init__(
        self,
        *,
        embedder: Embedder,
        store: VectorStore,
        records: RecordStore,
        bridge: ThreadBridge,
        chunker: Chunker,
        batch_size: int = 64,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.records = records
        self.bridge = bridge
        self.chunker = chunker
        self.batch_size = batch_size

    def _hash(self, document: Document) -> str:
        parts: list[Any] = [
            document.text,
            dict(document.metadata),
            document.source,
            self.embedder.model,
            self.chunker.size,
            self.chunker.overlap,
            _CONTEXT_VERSION,
        ]
        if document.acl:  # a new ACL is a change; no ACL hashes as it did before ACLs
            parts.append(list(document.acl))
        material = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(material.encode()).hexdigest()

    async def collect_garbage(self, collection: str, lifetime: Lifetime, *, owner: str) -> int:
        """Delete chunks of retired generations and of unfinished ones that no live
        writer is at: the record store decides which (``owner``'s own earlier attempt,
        and, where it is the only writer, every unfinished one)."""
        garbage = await self.records.garbage(collection, lifetime, owner=owner)
        for document_id, generation, ids in garbage:
            for start in range(0, len(ids), 1000):
                await self.store.delete(ids[start : start + 1000], lifetime, collection=collection)
            await self.records.forget(collection, document_id, generation, lifetime)
        return len(garbage)

    async def run(
        self,
        documents: Sequence[Document],
        lifetime: Lifetime,
        *,
        collection: str,
        owner: str,
        prune: bool = False,
        problems: Sequence[DocumentProblem] = (),
        stop: Stop | None = None,
        progress: IngestProgress | None = None,
        on_progress: Callable[[IngestProgress], object] | None = None,
    ) -> IngestProgress:
        """Ingest ``documents`` into ``collection`` as ``owner`` (a name that a retry of
        the same work repeats, so that it collects what its earlier attempt left). Returns
        when done or stopped; a cancellation of ``lifetime`` propagates (nothing
        half-visible is left either way)."""
        stop = stop or Stop()
        progress = progress or IngestProgress()
        progress.started = time.monotonic()
        progress.errors.extend(
            {"document_id": p.document_id, "source": p.source, "reason": p.reason} for p in problems
        )
        await self.collect_garbage(collection, lifetime, owner=owner)
        existing = await self.records.documents(collection, lifetime)
        changed: list[tuple[Document, str]] = []
        for document in documents:
            content_hash = self._hash(document)
            record = existing.get(document.id)
            if record is not None and record.content_hash == content_hash:
                progress.documents_skipped += 1
            else:
                changed.append((document, content_hash))
        progress.documents_total = len(changed)
        if prune:
            present = {d.id for d in documents}
            present |= {p.document_id for p in problems if p.document_id is not None}
            progress.documents_pruned += await self.records.prune(collection, present, lifetime)
        run = _Run(self, lifetime, collection, owner, stop, progress, on_progress)
        await run.write(changed)
        if progress.stopped is None:
            await self.collect_garbage(collection, lifetime, owner=owner)
        if progress.documents_done:
            # What was written, fast to search from the first question after the job.
            await self.store.settle(lifetime, collection=collection)
        if progress.stopped is None or progress.documents_done:
            # A job stopped at a batch boundary leaves its whole documents visible: the
            # collection is listed with them.
            await self.records.touch_collection(
                collection, self.embedder.model, self.embedder.dimensions, lifetime
            )
        if on_progress is not None:
            on_progress(progress)
        return progress


_Batch = list[tuple[_Pending, Chunk]]


@dataclass
class _Run:
    """One run of the writer: what every batch of it needs, and the batch in flight
    (embedded, not yet stored)."""

    ingestor: Ingestor
    lifetime: Lifetime
    collection: str
    owner: str
    stop: Stop
    progress: IngestProgress
    on_progress: Callable[[IngestProgress], object] | None
    in_flight: tuple[_Batch, list[list[float]]] | None = None

    async def write(self, changed: list[tuple[Document, str]]) -> None:
        """Chunk each document under a new generation and write it in batches."""
        ing, lifetime, progress = self.ingestor, self.lifetime, self.progress
        batch: _Batch = []
        model = ing.embedder.model
        for document, content_hash in changed:
            markdown = _is_markdown(document)
            pieces = await ing.bridge.run(lifetime, _split, ing.chunker, document.text, markdown)
            if not pieces:
                progress.errors.append(
                    {
                        "document_id": document.id,
                        "source": document.source,
                        "reason": "no text to index",
                    }
                )
                continue
            generation = await ing.records.begin_generation(
                self.collection, document.id, self.owner, lifetime
            )
            pending = _Pending(document, generation, content_hash, len(pieces))
            progress.chunks_total += len(pieces)
            progress.documents_chunked += 1
            for piece, text in pieces:
                ident = chunk_id(self.collection, document.id, generation, piece.index, model, text)
                chunk = Chunk(
                    id=ident,
                    document_id=document.id,
                    chunk_index=piece.index,
                    text=text,
                    source=document.source,
                    vector=(),
                    generation=generation,
                    acl=acl_class(document.acl),
                )
                batch.append((pending, chunk))
                if len(batch) == ing.batch_size:
                    if not await self._step(batch):
                        return
                    batch = []
        if batch and not await self._step(batch):
            return
        if self.in_flight is not None:
            await self._store(self.in_flight)

    async def _step(self, batch: _Batch) -> bool:
        """One batch boundary: check, then embed ``batch`` while the previous one is
        written. False once a stop was asked for (the batch in flight is stored first)."""
        ing, lifetime = self.ingestor, self.lifetime
        await lifetime.checkpoint()
        in_flight, self.in_flight = self.in_flight, None
        if self.stop.reason is not None:
            # The batch in flight was embedded before the stop: finish it, then stop.
            if in_flight is not None:
                await self._store(in_flight)
            self.progress.stopped = self.stop.reason
            return False
        await ing.records.intend_chunks(self.collection, [c for _, c in batch], lifetime)
        vectors: list[list[float]] = []

        async def embed() -> None:
            began = time.monotonic()
            vectors.extend(await ing.embedder.embed([c.text for _, c in batch], lifetime))
            self.progress.embedded_seconds += time.monotonic() - began

        async with anyio.create_task_group() as tg:
            tg.start_soon(embed)
            if in_flight is not None:
                await self._store(in_flight)
        self.progress.batches += 1
        self.in_flight = (batch, vectors)
        return True

    async def _store(self, done: tuple[_Batch, list[list[float]]]) -> None:
        """Write an embedded batch; switch in every document it completes."""
        ing, lifetime, progress = self.ingestor, self.lifetime, self.progress
        batch, vectors = done
        chunks = [
            Chunk(c.id, c.document_id, c.chunk_index, c.text, c.source, vector, c.generation, c.acl)
            for (_, c), vector in zip(batch, vectors, strict=True)
        ]
        await ing.store.upsert(chunks, lifetime, collection=self.collection)
        progress.chunks_done += len(chunks)
        finished: dict[int, _Pending] = {}
        for pending, _ in batch:
            pending.written += 1
            if pending.written == pending.chunks:
                finished[id(pending)] = pending
        for pending in finished.values():
            await ing.records.switch(
                self.collection,
                pending.document.id,
                pending.generation,
                lifetime,
                content_hash=pending.content_hash,
                chunks=pending.chunks,
                source=pending.document.source,
                readers=pending.document.acl,
            )
            progress.documents_done += 1
        if self.on_progress is not None:
            self.on_progress(progress)


_CONTEXT_VERSION = "markdown-context-1"  # a chunk's text as written: a change re-indexes
_MARKDOWN = (".md", ".markdown", ".mdx")


def _is_markdown(document: Document) -> bool:
    return document.source.lower().endswith(_MARKDOWN)


def _split(
    token: CancelToken, chunker: Chunker, text: str, markdown: bool
) -> list[tuple[TextChunk, str]]:
    """The chunks of ``text``, each with the text to index: in Markdown, the chunk with the
    headings (and table header) above it, so that it says what it is about."""
    pieces = chunker.split(text)
    if not markdown:
        return [(piece, piece.text) for piece in pieces]
    context = MarkdownContext(text)
    out = []
    for piece in pieces:
        above = context.at(piece.start)
        out.append((piece, f"{above}\n\n{piece.text}" if above else piece.text))
    return out
