"""One protocol per provider kind. Async-only; every call takes the owner's lifetime.

Vendor modules (``ragline.providers.openai`` and the ones that follow) import their SDKs
inside themselves, so importing this package loads none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

from ..lifetime import Lifetime
from ..models import ChatRequest, Chunk, Generation, Hit, Prompt

__all__ = [
    "EmbedKind",
    "Embedder",
    "Generator",
    "KeywordIndex",
    "OnDelta",
    "PromptComposer",
    "QueryTransformer",
    "VectorStore",
]

OnDelta = Callable[[str], Awaitable[None]]
"""Receives each non-empty piece of generated text as it arrives."""


@runtime_checkable
class QueryTransformer(Protocol):
    """Rewrites the user's query before retrieval (identity by default)."""

    async def transform(self, query: str, lifetime: Lifetime) -> str: ...


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
    that does not exist finds nothing. Upserting a chunk id again replaces it.
    """

    async def search(
        self,
        vector: Sequence[float],
        top_k: int,
        lifetime: Lifetime,
        *,
        collection: str | None = None,
    ) -> list[Hit]: ...

    async def upsert(
        self, chunks: Sequence[Chunk], lifetime: Lifetime, *, collection: str | None = None
    ) -> None: ...

    async def delete(
        self, ids: Sequence[str], lifetime: Lifetime, *, collection: str | None = None
    ) -> None: ...


@runtime_checkable
class KeywordIndex(Protocol):
    """Lexical (BM25) search over the same chunks, for hybrid retrieval."""

    async def search(
        self, query: str, top_k: int, lifetime: Lifetime, *, collection: str | None = None
    ) -> list[Hit]: ...


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
