"""Providers from settings. Vendor modules are imported only for the providers chosen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import anyio

from .chunking import Chunker, Tokenizer, minilm_tokenizer
from .errors import RagLineError
from .extracts import Extractor
from .ingestion import Ingestor
from .lifetime import Lifetime
from .providers import (
    Embedder,
    Generator,
    PromptComposer,
    QueryTransformer,
    Records,
    VectorStore,
)
from .providers.prompt import DEFAULT_INSTRUCTIONS
from .settings import Settings
from .threads import ThreadBridge

__all__ = [
    "LOCAL_CONTEXT",
    "UPSTREAM_CONTEXT",
    "ContextShape",
    "Ingestion",
    "build_chunker",
    "build_composer",
    "build_embedder",
    "build_extractor",
    "build_generator",
    "build_ingestion",
    "build_store",
    "build_transformer",
    "grounding_guard",
    "open_parts",
]


@dataclass(frozen=True)
class ContextShape:
    """How much retrieved context a model reads, and how it is laid out."""

    tokens: int
    passages: int | None
    focus: bool
    placement: Literal["user", "system"]
    instructions: str = DEFAULT_INSTRUCTIONS


# Chosen by the answer eval (`make bench-answers`, figures in docs/BENCHMARKS.md): the
# small local model answers from few passages cut to their sentences closest to the
# question; a large upstream model reads the passages whole.
LOCAL_CONTEXT = ContextShape(
    tokens=400,
    passages=3,
    focus=True,
    # As part of its instructions, a small model reads the passages as given; after them
    # in the user's message, it tends to continue their list ("[4] ...").
    placement="system",
    instructions=(
        "Answer the question in one or two sentences, using only the numbered context. "
        "Cite the passage you used as [n]. If the context does not contain the answer, "
        "say you do not know."
    ),
)
UPSTREAM_MAX_TOKENS = 256
UPSTREAM_CONTEXT = ContextShape(tokens=3_000, passages=None, focus=False, placement="user")


def build_generator(settings: Settings, bridge: ThreadBridge) -> Generator:
    """``RAGLINE_LLM_PROVIDER``: ``local`` (llama.cpp) or ``openai`` (any compatible server)."""
    s = settings
    if s.llm_provider == "local":
        from .providers.llamacpp import LOCAL_MAX_TOKENS, LlamaCppGenerator

        local = LlamaCppGenerator(
            bridge,
            model=s.llm_model,
            model_path=s.llm_model_path,
            context=s.llm_context,
            threads=s.llm_threads,
            batch_threads=s.llm_batch_threads,
            max_prompt_tokens=s.llm_max_prompt_tokens,
            max_tokens=s.llm_max_tokens or LOCAL_MAX_TOKENS,
            sampling=s.sampling,
            penalty_window=s.llm_penalty_window,
            queue_size=s.llm_queue_size,
        )
        return local
    from .providers.openai import OpenAIGenerator

    remote = OpenAIGenerator(
        base_url=s.llm_base_url,
        model=s.llm_model,
        api_key=s.llm_api_key,
        max_connections=s.llm_max_connections,
        connect_timeout=s.llm_connect_timeout,
        retries=s.llm_retries,
        max_event_bytes=s.llm_max_event_bytes,
        first_token_timeout=s.llm_first_token_timeout,
        total_timeout=s.llm_total_timeout,
        max_tokens=s.llm_max_tokens or UPSTREAM_MAX_TOKENS,
        sampling=s.sampling,
    )
    return remote


def build_embedder(settings: Settings, bridge: ThreadBridge) -> Embedder:
    """``RAGLINE_EMBEDDINGS``: ``local`` (MiniLM), ``openai`` or ``cohere``."""
    s = settings
    if s.embeddings == "local":
        from .providers.minilm import MiniLMEmbedder

        return MiniLMEmbedder(bridge, batch_size=s.embeddings_batch_size, bf16=s.embeddings_bf16)
    if s.embeddings == "openai":
        from .providers.openai import OpenAIEmbedder

        return OpenAIEmbedder(
            base_url=s.embeddings_base_url or s.llm_base_url,
            model=s.embeddings_model or "text-embedding-3-small",
            dimensions=s.embeddings_dimensions or 1536,
            api_key=s.embeddings_api_key or s.llm_api_key,
            batch_size=s.embeddings_batch_size,
        )
    from .providers.cohere import CohereEmbedder

    return CohereEmbedder(
        api_key=s.embeddings_api_key,
        model=s.embeddings_model or "embed-english-v3.0",
        dimensions=s.embeddings_dimensions or 1024,
        base_url=s.embeddings_base_url or "https://api.cohere.com",
        batch_size=s.embeddings_batch_size,
    )


def build_store(settings: Settings, bridge: ThreadBridge, *, dimensions: int) -> VectorStore:
    """Milvus Lite under ``RAGLINE_DATA_DIR``, or the Milvus at ``RAGLINE_VECTOR_URI``."""
    from .providers.milvus import MilvusStore

    s = settings
    uri = s.vector_uri or str(Path(s.data_dir) / "milvus.db")
    return MilvusStore(
        bridge,
        uri=uri,
        dimensions=dimensions,
        default_collection=s.collection,
        token=s.vector_token.get_secret_value() if s.vector_token else None,
        consistency=s.vector_consistency,
    )


def build_composer(settings: Settings, generator: Generator) -> PromptComposer:
    """The prompt composer, its context sized for the model: the local model reads few,
    short passages (figures in docs/BENCHMARKS.md), an upstream model many."""
    from .providers.prompt import ContextPromptComposer, rough_tokens

    s = settings
    count = getattr(generator, "count_tokens", rough_tokens)
    shape = LOCAL_CONTEXT if s.llm_provider == "local" else UPSTREAM_CONTEXT
    return ContextPromptComposer(
        context_tokens=s.context_tokens if s.context_tokens is not None else shape.tokens,
        max_passages=s.context_passages or shape.passages,
        count_tokens=count,
        focus=shape.focus if s.context_focus is None else s.context_focus,
        placement=s.context_placement or shape.placement,
        instructions=s.system_instructions or shape.instructions,
    )


LOCAL_ABSTAIN_BELOW = 0.3  # the answer eval's threshold (docs/BENCHMARKS.md §7)


def build_extractor(settings: Settings) -> Extractor | None:
    """The extractive answer shape, if the settings (or the provider's default) ask for
    it: the local model quotes, an upstream one writes."""
    s = settings
    local = s.llm_provider == "local"
    shape = s.answer_shape or ("extractive" if local else "generate")
    if shape != "extractive":
        return None
    below = s.abstain_below if s.abstain_below is not None else LOCAL_ABSTAIN_BELOW
    return Extractor(abstain_below=below or None)


def grounding_guard(settings: Settings) -> bool:
    """Whether generations stop at a sentence no source supports; unset, what the eval's
    false positives justify per provider (docs/BENCHMARKS.md §7)."""
    if settings.grounding_guard is not None:
        return settings.grounding_guard
    return settings.llm_provider == "local"


def build_transformer(settings: Settings, generator: Generator) -> QueryTransformer:
    """What ``RAGLINE_QUERY_REWRITE`` asks for; unset, what the follow-up set measured
    best for the model (docs/BENCHMARKS.md §10): a join with the small local model, a
    rewrite of follow-ups by an upstream one."""
    mode = settings.query_rewrite
    if mode is None:
        mode = "join" if settings.llm_provider == "local" else "follow-ups"
    if mode == "join":
        from .providers.rewrite import JoinRewriter

        return JoinRewriter()
    if mode != "off":
        from .providers.rewrite import LLMRewriter

        return LLMRewriter(generator, follow_ups_only=mode == "follow-ups")
    from .providers.identity import IdentityTransformer

    return IdentityTransformer()


class _LazyTokenizer:
    """The MiniLM tokenizer, loaded on first use (in a worker thread, by the chunker)."""

    def __init__(self) -> None:
        self._tokenizer: Tokenizer | None = None

    def offsets(self, text: str) -> list[tuple[int, int]]:
        if self._tokenizer is None:
            self._tokenizer = minilm_tokenizer()
        return self._tokenizer.offsets(text)


def build_chunker(settings: Settings) -> Chunker:
    """Chunks by all-MiniLM-L6-v2's tokens (also the count used for remote embedders:
    close enough to size chunks, and available offline)."""
    return Chunker(_LazyTokenizer(), size=settings.chunk_tokens, overlap=settings.chunk_overlap)


@dataclass
class Ingestion:
    """The write side of ingestion and what it writes to, built the same way for the
    server and for `ragline ingest`. ``built`` lists the parts made here, which their
    builder opens and closes (:func:`open_parts`)."""

    embedder: Embedder
    store: VectorStore
    records: Records
    ingestor: Ingestor
    built: list[object]


def build_ingestion(
    settings: Settings,
    bridge: ThreadBridge,
    records: Records,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
) -> Ingestion:
    """The embedder and store (``embedder``/``store`` when given) and an
    :class:`Ingestor` over them that records into ``records`` (the backend's)."""
    built: list[object] = [records]  # first: it closes last, after what writes to it
    if embedder is None:
        embedder = build_embedder(settings, bridge)
        built.append(embedder)
    if store is None:
        store = build_store(settings, bridge, dimensions=embedder.dimensions)
        built.append(store)
    ingestor = Ingestor(
        embedder=embedder,
        store=store,
        records=records,
        bridge=bridge,
        chunker=build_chunker(settings),
        batch_size=settings.ingest_batch_size,
    )
    return Ingestion(embedder, store, records, ingestor, built)


@runtime_checkable
class _Opens(Protocol):
    async def open(self, lifetime: Lifetime) -> None: ...


async def open_parts(
    stack: AsyncExitStack,
    lifetime: Lifetime,
    parts: Sequence[object],
    *,
    grace: float,
    opened: list[object] | None = None,
    failed: list[RagLineError] | None = None,
) -> int:
    """Open ``parts`` side by side (those with ``open(lifetime)``: loading a model,
    connecting a store). Each part's close (``aclose()`` or ``close()``) goes on ``stack``
    once it is open, or at once if it has nothing to open, so that leaving the stack
    closes in reverse order exactly what was opened, also when an open fails halfway.
    Each close is shielded and bounded by ``grace`` seconds. Returns how many opened.

    ``opened`` collects the parts that are open when it returns. With ``failed``, a part
    whose open raises a :class:`RagLineError` (an engine that is down) is recorded there
    and the others go on; without it, the first failure cancels the rest and is raised."""
    openers: list[tuple[_Opens, Callable[[], Awaitable[None]] | None]] = []
    for part in parts:
        closer = _closer(part, grace)
        if isinstance(part, _Opens):
            openers.append((part, closer))
        else:
            if closer is not None:
                stack.push_async_callback(closer)
            if opened is not None:
                opened.append(part)

    async def open_one(part: _Opens, closer: Callable[[], Awaitable[None]] | None) -> None:
        try:
            await part.open(lifetime)
        except RagLineError as exc:
            if failed is None:
                raise
            failed.append(exc)
            return
        if closer is not None:
            stack.push_async_callback(closer)
        if opened is not None:
            opened.append(part)

    async with anyio.create_task_group() as tg:
        for part, closer in openers:
            tg.start_soon(open_one, part, closer)
    return len(openers)


def _closer(part: object, grace: float) -> Callable[[], Awaitable[None]] | None:
    aclose = getattr(part, "aclose", None)
    close = getattr(part, "close", None)
    if aclose is None and close is None:
        return None

    async def closing() -> None:
        # Closing pools is quick; bound it anyway so a stuck part cannot hang exit.
        with anyio.move_on_after(grace, shield=True):
            if aclose is not None:
                await aclose()
            elif close is not None:
                close()

    return closing
