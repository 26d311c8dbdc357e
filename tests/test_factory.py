"""Providers from settings, the context sized per model, and opening and closing parts on
one exit stack: in reverse order, and only what was opened when an open fails halfway."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from ragline import Lifetime, Settings, ThreadBridge, UpstreamError
from ragline.backend import build_backend
from ragline.factory import (
    build_composer,
    build_embedder,
    build_generator,
    build_ingestion,
    build_store,
    build_transformer,
    open_parts,
)
from ragline.providers.prompt import ContextPromptComposer, rough_tokens
from ragline.providers.sqlite import SqliteRecords

pytestmark = pytest.mark.anyio


def test_the_generator_is_the_local_model_or_an_upstream() -> None:
    from ragline.providers.llamacpp import LlamaCppGenerator
    from ragline.providers.openai import OpenAIGenerator

    bridge = ThreadBridge()
    local = build_generator(Settings(), bridge)
    assert isinstance(local, LlamaCppGenerator)
    assert local._max_tokens == 160  # the eval's choice for the small model
    remote = build_generator(
        Settings(llm_provider="openai", llm_base_url="http://127.0.0.1:9/v1/", llm_model="m"),
        bridge,
    )
    assert isinstance(remote, OpenAIGenerator)
    assert remote._url == "http://127.0.0.1:9/v1/chat/completions"
    assert remote._max_tokens == 256
    assert build_generator(Settings(llm_max_tokens=50), bridge)._max_tokens == 50  # type: ignore[attr-defined]


def test_embedders_by_name_with_their_defaults() -> None:
    from ragline.providers.cohere import CohereEmbedder
    from ragline.providers.minilm import MiniLMEmbedder
    from ragline.providers.openai import OpenAIEmbedder

    bridge = ThreadBridge()
    assert isinstance(build_embedder(Settings(), bridge), MiniLMEmbedder)
    openai = build_embedder(Settings(embeddings="openai"), bridge)
    assert isinstance(openai, OpenAIEmbedder)
    assert (openai.model, openai.dimensions) == ("text-embedding-3-small", 1536)
    cohere = build_embedder(Settings(embeddings="cohere", embeddings_dimensions=384), bridge)
    assert isinstance(cohere, CohereEmbedder)
    assert (cohere.model, cohere.dimensions) == ("embed-english-v3.0", 384)


def test_the_store_is_milvus_lite_in_the_data_dir_or_a_server(tmp_path: Path) -> None:
    from ragline.providers.milvus import MilvusStore

    bridge = ThreadBridge()
    lite = build_store(Settings(data_dir=str(tmp_path)), bridge, dimensions=384)
    assert isinstance(lite, MilvusStore)
    assert (lite.uri, lite.is_lite) == (str(tmp_path / "milvus.db"), True)
    server = build_store(Settings(vector_uri="http://127.0.0.1:19530"), bridge, dimensions=8)
    assert isinstance(server, MilvusStore)
    assert (server.uri, server.is_lite) == ("http://127.0.0.1:19530", False)


def test_follow_ups_are_rewritten_by_default_every_query_or_none_when_asked() -> None:
    from ragline.providers.identity import IdentityTransformer
    from ragline.providers.rewrite import JoinRewriter, LLMRewriter

    generator = build_generator(Settings(llm_provider="openai"), ThreadBridge())
    # The small local model's rewrites are worse than a join (BENCHMARKS §10).
    assert isinstance(build_transformer(Settings(), generator), JoinRewriter)
    default = build_transformer(Settings(llm_provider="openai"), generator)
    assert isinstance(default, LLMRewriter)
    assert default.follow_ups_only
    always = build_transformer(Settings(query_rewrite="always"), generator)
    assert isinstance(always, LLMRewriter)
    assert not always.follow_ups_only
    assert isinstance(
        build_transformer(Settings(query_rewrite="off"), generator), IdentityTransformer
    )
    # The setting was a boolean: true meant every question, false none.
    assert Settings(query_rewrite=True).query_rewrite == "always"
    assert Settings(query_rewrite="false").query_rewrite == "off"


def test_the_local_model_reads_few_focused_passages_an_upstream_many_whole() -> None:
    local = build_composer(Settings(), object())  # type: ignore[arg-type]
    assert isinstance(local, ContextPromptComposer)
    assert (local.context_tokens, local.max_passages, local.focus) == (400, 3, True)
    assert local.placement == "system"
    assert local.count_tokens is rough_tokens  # no tokenizer on this generator
    remote = build_composer(Settings(llm_provider="openai"), object())  # type: ignore[arg-type]
    assert isinstance(remote, ContextPromptComposer)
    assert (remote.context_tokens, remote.max_passages, remote.focus) == (3000, None, False)
    assert remote.placement == "user"
    tuned = build_composer(
        Settings(context_tokens=100, context_passages=2, context_focus=False),
        object(),  # type: ignore[arg-type]
    )
    assert isinstance(tuned, ContextPromptComposer)
    assert (tuned.context_tokens, tuned.max_passages, tuned.focus) == (100, 2, False)


def test_the_ingestion_parts_use_what_they_are_given(tmp_path: Path) -> None:
    from ragline.providers.memory import MemoryStore

    store = MemoryStore()
    settings = Settings(data_dir=str(tmp_path), embeddings="openai")
    bridge = ThreadBridge()
    records = build_backend(settings, bridge).records
    ingestion = build_ingestion(settings, bridge, records, store=store)
    assert ingestion.store is store
    assert ingestion.built == [ingestion.records, ingestion.embedder]
    assert ingestion.ingestor.store is store
    assert isinstance(ingestion.records, SqliteRecords)
    ingestion.records.close()


class Part:
    """A provider that records when it opens and closes; its open may fail or hang."""

    def __init__(self, name: str, events: list[str], *, fail: bool = False) -> None:
        self.name = name
        self.events = events
        self.fail = fail
        self.entered = anyio.Event()

    async def open(self, lifetime: Lifetime) -> None:
        self.entered.set()
        self.events.append(f"opening {self.name}")
        if self.fail:
            raise UpstreamError(f"{self.name} is unreachable")
        await anyio.lowlevel.checkpoint()
        self.events.append(f"opened {self.name}")

    async def aclose(self) -> None:
        self.events.append(f"closed {self.name}")


class Slow(Part):
    async def open(self, lifetime: Lifetime) -> None:
        self.events.append(f"opening {self.name}")
        await anyio.sleep_forever()  # cancelled when a sibling fails


class Closable:
    """A part with nothing to open and a blocking close, as the record store."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def close(self) -> None:
        self.events.append("closed records")


async def test_parts_open_side_by_side_and_close_in_reverse() -> None:
    events: list[str] = []
    parts = [Closable(events), Part("embedder", events), Part("store", events), object()]
    with Lifetime.root() as root:
        async with AsyncExitStack() as stack:
            assert await open_parts(stack, root, parts, grace=1) == 2
            assert set(events) == {
                "opening embedder",
                "opening store",
                "opened embedder",
                "opened store",
            }
            events.clear()
    assert events[-1] == "closed records", "what has nothing to open closes last"
    assert sorted(events[:2]) == ["closed embedder", "closed store"]


async def test_a_part_that_fails_to_open_closes_what_was_opened_and_nothing_else() -> None:
    events: list[str] = []
    good, slow = Part("embedder", events), Slow("model", events)
    parts = [Closable(events), good, slow, Part("store", events, fail=True)]
    with Lifetime.root() as root, pytest.raises(ExceptionGroup) as raised:
        async with AsyncExitStack() as stack:
            await open_parts(stack, root, parts, grace=1)
    assert raised.group_contains(UpstreamError, match="store is unreachable")
    assert "closed embedder" in events
    assert events[-1] == "closed records"
    assert "closed model" not in events, "a part whose open never finished is not closed"
    assert "closed store" not in events


async def test_a_close_that_hangs_is_bounded_by_the_grace() -> None:
    class Stuck:
        async def aclose(self) -> None:
            await anyio.sleep_forever()

    with Lifetime.root() as root, anyio.fail_after(5):
        async with AsyncExitStack() as stack:
            await open_parts(stack, root, [Stuck()], grace=0.05)
