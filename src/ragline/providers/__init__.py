"""One protocol per provider kind. Async-only; every call takes the owner's lifetime.

Vendor modules (``ragline.providers.openai`` and the ones that follow) import their SDKs
inside themselves, so importing this package loads none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from ..access import Readable
from ..lifetime import Lifetime
from ..models import ChatRequest, Chunk, DocumentRecord, Generation, Hit, Message, Prompt

__all__ = [
    "EmbedKind",
    "Embedder",
    "Generator",
    "JobStore",
    "KeywordIndex",
    "OnDelta",
    "PromptComposer",
    "QueryTransformer",
    "RecordStore",
    "Records",
    "VectorStore",
    "bounded",
]

OnDelta = Callable[[str], Awaitable[None]]
"""Receives each non-empty piece of generated text as it arrives."""


@runtime_checkable
class QueryTransformer(Protocol):
    """Rewrites the user's query before retrieval, given the conversation before it
    (``history``, oldest first; empty for a question that stands alone)."""

    async def transform(
        self, query: str, history: Sequence[Message], lifetime: Lifetime
    ) -> str: ...


EmbedKind = Literal["query", "document"]
"""What a text is for; some models (Cohere v3) embed queries and documents differently."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors (unit length, so cosine is a dot product)."""

    model: str
    dimensions: int

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: EmbedKind = "document"
    ) -> list[list[float]]: ...


@runtime_checkable
class VectorStore(Protocol):
    """Stores chunks with their vectors and finds the nearest ones, per collection.

    ``collection=None`` means the store's default collection. Searching a collection
    that does not exist finds nothing. Upserting a chunk id again replaces it. A search
    returns only chunks whose ACL class is ``readable``, filtered inside the query, so
    ``top_k`` is filled from those. ``settle`` is called once a run of writes ends
    (an ingestion job): a store that indexes writes in the background (Milvus Lite
    scans its unsealed rows one by one) makes them fast to search; others return.
    """

    async def search(
        self,
        vector: Sequence[float],
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]: ...

    async def upsert(
        self, chunks: Sequence[Chunk], lifetime: Lifetime, *, collection: str | None = None
    ) -> None: ...

    async def delete(
        self, ids: Sequence[str], lifetime: Lifetime, *, collection: str | None = None
    ) -> None: ...

    async def settle(self, lifetime: Lifetime, *, collection: str | None = None) -> None: ...


@runtime_checkable
class KeywordIndex(Protocol):
    """Lexical (BM25) search over the same chunks, for hybrid retrieval; only chunks of
    ``readable`` ACL classes, as :class:`VectorStore`."""

    async def search(
        self,
        query: str,
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]: ...


@runtime_checkable
class RecordStore(Protocol):
    """Which generation of each document is visible, every chunk id ever written (for
    garbage collection) and the chunks' text (for BM25), per collection.

    Ingestion reserves a generation, records its chunks *before* the vector store gets
    them, and switches it in with one transaction; readers see only switched-in
    generations. Chunks of generation 0 were written outside ingestion: always visible.
    SQLite by default (:mod:`ragline.providers.sqlite`), PostgreSQL for many replicas
    (:mod:`ragline.providers.postgres_records`); one conformance suite holds both to this.
    """

    #: Whether other writers (processes) may be at work on this store at the same time.
    shared: bool

    async def documents(self, collection: str, lifetime: Lifetime) -> dict[str, DocumentRecord]:
        """Every visible document of ``collection``."""
        ...

    async def active(
        self, collection: str, document_ids: Sequence[str], lifetime: Lifetime
    ) -> dict[str, int]:
        """The visible generation of each of ``document_ids`` that has one."""
        ...

    async def begin_generation(
        self, collection: str, document_id: str, owner: str, lifetime: Lifetime
    ) -> int:
        """Reserve the document's next generation, in state ``writing``."""
        ...

    async def intend_chunks(
        self, collection: str, chunks: Sequence[Chunk], lifetime: Lifetime
    ) -> None:
        """Record chunks before they are written to the vector store."""
        ...

    async def switch(
        self,
        collection: str,
        document_id: str,
        generation: int,
        lifetime: Lifetime,
        *,
        content_hash: str,
        chunks: int,
        source: str,
        readers: Sequence[str],
    ) -> None:
        """Make ``generation`` the visible one and retire the previous, atomically; the
        document's ACL (``readers``; empty: none) takes effect with it."""
        ...

    async def prune(self, collection: str, keep: Collection[str], lifetime: Lifetime) -> int:
        """Make every document of ``collection`` not in ``keep`` invisible, at once (their
        generations retired, to be collected); how many."""
        ...

    async def garbage(
        self, collection: str, lifetime: Lifetime, *, owner: str
    ) -> list[tuple[str, int, list[str]]]:
        """Generations to delete, each as (document_id, generation, chunk ids): retired
        ones, and unfinished ones that no live writer is at. The store knows whether
        other writers can exist: one that is the only writer (SQLite) returns every
        unfinished generation; a shared one (PostgreSQL) only ``owner``'s own (an
        earlier attempt of the same work) and those abandoned long ago."""
        ...

    async def forget(
        self, collection: str, document_id: str, generation: int, lifetime: Lifetime
    ) -> None:
        """Drop a generation whose chunks are gone from the vector store."""
        ...

    async def keyword_search(
        self, collection: str, query: str, limit: int, lifetime: Lifetime, *, readable: Readable
    ) -> list[Hit]:
        """Visible chunks of ``readable`` documents ranked for the query's words, best
        first (the ACL filter is in the same query)."""
        ...

    async def acl_classes(self, collection: str, lifetime: Lifetime) -> dict[int, list[str]]:
        """The read entries of each ACL class that a document of ``collection`` has had."""
        ...

    async def touch_collection(
        self, name: str, model: str, dimensions: int, lifetime: Lifetime
    ) -> None:
        """Note that ``name`` was ingested into now, with this embedding model."""
        ...

    async def collections(self, lifetime: Lifetime) -> list[dict[str, Any]]:
        """Every collection with its documents, chunks, model and last ingestion."""
        ...


@runtime_checkable
class JobStore(Protocol):
    """Ingestion jobs' persisted state, readable by every replica."""

    async def save_job(
        self, job_id: str, state: str, body: dict[str, Any], lifetime: Lifetime
    ) -> None:
        """Create or replace a job's state and body."""
        ...

    async def jobs(
        self, lifetime: Lifetime, *, states: Sequence[str] = ()
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Jobs as (id, state, body), oldest first, optionally only in ``states``."""
        ...

    async def job(self, job_id: str, lifetime: Lifetime) -> tuple[str, dict[str, Any]] | None:
        """One job's (state, body), or None."""
        ...


@runtime_checkable
class Records(RecordStore, JobStore, Protocol):
    """A backend that keeps both: SQLite or PostgreSQL."""


@runtime_checkable
class PromptComposer(Protocol):
    """Builds the model's messages from instructions, retrieved context and the query."""

    async def compose(
        self, request: ChatRequest, hits: Sequence[Hit], lifetime: Lifetime
    ) -> Prompt: ...


@runtime_checkable
class Generator(Protocol):
    """Generates text. Fills ``into`` as tokens arrive, so usage survives a cut.

    With ``on_delta`` the text is streamed to it piece by piece.
    """

    provider: str
    model: str

    async def generate(
        self,
        prompt: Prompt,
        lifetime: Lifetime,
        into: Generation,
        on_delta: OnDelta | None = None,
    ) -> Generation: ...


def bounded(asked: int | None, bound: int | None) -> int | None:
    """A client's ``max_tokens`` clamped to the server's (``RAGLINE_LLM_MAX_TOKENS``):
    a client may ask for fewer tokens, never for more."""
    if asked is None:
        return bound
    return asked if bound is None else min(asked, bound)
