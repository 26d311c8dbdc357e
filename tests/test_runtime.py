"""One application's parts: opened before its work starts, closed after its work has
stopped, in reverse order; an engine that is down at start leaves the application up and
not ready until it comes back, and what was opened is closed either way."""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

from conftest import free_port, milvus_server, serve, upstream_running
from fake_embeddings import FakeEmbeddings, embeddings_server
from ragline import Cause, Lifetime, Settings
from ragline.providers.milvus import MilvusStore
from ragline.providers.openai import OpenAIEmbedder, OpenAIGenerator
from ragline.providers.sqlite import SqliteRecords
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
        records = runtime.records
        assert isinstance(records, SqliteRecords)
        records.file.documents("default")
    except sqlite3.ProgrammingError:
        return False
    return True


async def test_work_stops_before_the_parts_close(tmp_path: Path) -> None:
    seen: dict[str, object] = {}
    async with embeddings_server(FakeEmbeddings()) as fake, upstream_running(FakeUpstream()) as up:
        runtime = Runtime(settings(tmp_path, fake, up))
        store = runtime.pipeline.store.store  # under the VisibleStore
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


async def test_an_engine_down_at_start_leaves_the_runtime_up_not_ready_and_closes_cleanly(
    tmp_path: Path,
) -> None:
    """The store cannot open: the runtime runs anyway, not ready, and says why (the URL's
    password withheld); on the way out, what did open is closed, and only that."""
    port = free_port()  # nothing listens here
    uri = f"http://ragline:s3cret@127.0.0.1:{port}"
    async with embeddings_server(FakeEmbeddings()) as fake, upstream_running(FakeUpstream()) as up:
        runtime = Runtime(settings(tmp_path, fake, up, vector_uri=uri))
        embedder = runtime.pipeline.embedder
        generator = runtime.pipeline.generator
        store = runtime.pipeline.store.store  # under the VisibleStore
        assert isinstance(embedder, OpenAIEmbedder)
        assert isinstance(generator, OpenAIGenerator)
        assert isinstance(store, MilvusStore)
        async with runtime.running():
            assert not runtime.ready
            assert runtime.unavailable is not None
            assert f"cannot connect to Milvus at http://ragline:***@127.0.0.1:{port}" in (
                runtime.unavailable
            )
            assert "s3cret" not in runtime.unavailable
            assert runtime.supervisor.running_now  # retrying the store
        assert not runtime.supervisor.running_now
        assert not is_open(runtime)
        assert embedder._client.is_closed
        assert generator._client.is_closed
        assert store._client is None


async def test_the_runtime_becomes_ready_when_the_engine_comes_back(tmp_path: Path) -> None:
    port = free_port()
    async with embeddings_server(FakeEmbeddings()) as fake, upstream_running(FakeUpstream()) as up:
        config = settings(tmp_path / "app", fake, up, vector_uri=f"http://127.0.0.1:{port}")
        async with serve(config) as running, httpx.AsyncClient(base_url=running.url) as http:
            before = await http.get("/readyz")
            retrieved_before = await http.post("/api/v1/retrieve", json={"query": "herons"})
            async with milvus_server(tmp_path / "milvus", port):
                with anyio.fail_after(30):
                    while (await http.get("/readyz")).status_code != 200:
                        await anyio.sleep(0.1)
                retrieved = await http.post("/api/v1/retrieve", json={"query": "herons"})
    assert before.status_code == 503
    assert "cannot connect to Milvus" in before.json()["reason"]
    assert retrieved_before.status_code == 502  # the engine named, never a 500
    assert "Milvus" in retrieved_before.json()["error"]["message"]
    assert retrieved.status_code == 200
    assert retrieved.json() == {"hits": []}


async def test_a_milvus_server_that_goes_away_is_a_502_and_is_used_again_when_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    data = tmp_path / "milvus"
    document = {"id": "herons", "text": "Herons stand still in shallow water and eat fish."}
    query = {"query": "herons in water", "top_k": 1}
    async with (
        embeddings_server(FakeEmbeddings()) as fake,
        upstream_running(FakeUpstream()) as up,
        AsyncExitStack() as first,
        AsyncExitStack() as second,
    ):
        await first.enter_async_context(milvus_server(data, port))
        config = settings(tmp_path / "app", fake, up, vector_uri=f"http://127.0.0.1:{port}")
        async with serve(config) as running, httpx.AsyncClient(base_url=running.url) as http:
            job = (await http.post("/api/v1/ingest", json={"documents": [document]})).json()
            with anyio.fail_after(30):
                while True:
                    state = (await http.get(f"/api/v1/ingest/{job['job_id']}")).json()["state"]
                    if state == "succeeded":
                        break
                    await anyio.sleep(0.1)
            found = await http.post("/api/v1/retrieve", json=query)
            await first.aclose()  # the Milvus server goes away
            gone = await http.post("/api/v1/retrieve", json=query)
            await second.enter_async_context(milvus_server(data, port))  # and comes back
            with anyio.fail_after(30):
                while (back := await http.post("/api/v1/retrieve", json=query)).status_code != 200:
                    await anyio.sleep(0.2)
    assert [hit["document_id"] for hit in found.json()["hits"]] == ["herons"]
    assert gone.status_code == 502
    assert gone.json()["error"]["message"].startswith(f"Milvus at http://127.0.0.1:{port}")
    assert back.json()["hits"] == found.json()["hits"]
