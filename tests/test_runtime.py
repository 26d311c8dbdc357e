"""One application's parts: opened before its work starts, closed after its work has
stopped, in reverse order; and when a part cannot open, what was opened is closed."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from conftest import upstream_running
from fake_embeddings import FakeEmbeddings, embeddings_server
from ragline import Cause, Lifetime, Settings, UpstreamError
from ragline.providers.milvus import MilvusStore
from ragline.providers.openai import OpenAIEmbedder, OpenAIGenerator
from ragline.runtime import Runtime
from upstream import FakeUpstream

pytestmark = pytest.mark.anyio


def settings(
    tmp_path: Path, fake: FakeEmbeddings, upstream: FakeUpstream, **values: object
) -> Settings:
    return Settings(
        data_dir=str(tmp_path),
        llm_provider="openai",
        llm_base_url=upstream.base_url,
        embeddings="openai",
        embeddings_base_url=f"http://127.0.0.1:{fake.port}/v1",
        embeddings_api_key=fake.key,  # type: ignore[arg-type]
        embeddings_dimensions=fake.dimensions,
        **values,  # type: ignore[arg-type]
    )


def is_open(runtime: Runtime) -> bool:
    try:
        runtime.records.documents("default")
    except sqlite3.ProgrammingError:
        return False
    return True


async def test_work_stops_before_the_parts_close(tmp_path: Path) -> None:
    seen: dict[str, object] = {}
    async with embeddings_server(FakeEmbeddings()) as fake, upstream_running(FakeUpstream()) as up:
        runtime = Runtime(settings(tmp_path, fake, up))
        store = runtime.ingestor.store
        assert isinstance(store, MilvusStore)

        async def work(lifetime: Lifetime) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                seen["cause"] = lifetime.reason.cause if lifetime.reason else None
                seen["records open"] = is_open(runtime)
                seen["store open"] = store._client is not None

        async with runtime.running():
            assert runtime.ready
            assert runtime.supervisor.running_now
            assert store._client is not None, "the store opened before the work began"
            runtime.supervisor.start(runtime.lifetime.child("work"), work)
            await anyio.lowlevel.checkpoint()
        assert seen == {"cause": Cause.SHUTDOWN, "records open": True, "store open": True}
        assert not is_open(runtime)
        assert store._client is None
        assert not runtime.supervisor.running_now


async def test_a_part_that_cannot_open_closes_what_was_opened(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with embeddings_server(FakeEmbeddings()) as fake, upstream_running(FakeUpstream()) as up:
        runtime = Runtime(settings(tmp_path, fake, up, vector_uri=f"http://127.0.0.1:{port}"))
        embedder = runtime.ingestor.embedder
        generator = runtime.pipeline.generator
        assert isinstance(embedder, OpenAIEmbedder)
        assert isinstance(generator, OpenAIGenerator)
        with pytest.raises(ExceptionGroup) as raised:
            async with runtime.running():
                pytest.fail("the runtime ran without its store")
        assert raised.group_contains(UpstreamError, match="cannot connect to Milvus")
        assert not runtime.ready
        assert not runtime.supervisor.running_now
        assert not is_open(runtime)
        assert embedder._client.is_closed
        assert all(client.is_closed for client in generator._clients._clients)
