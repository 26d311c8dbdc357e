"""``ragline ask`` in a real terminal process: streams, and Ctrl-C stops generation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from conftest import free_port, owning_server, serve, settings_for, upstream_running
from fake_embeddings import WordEmbedder
from ragline import Chunk, Lifetime
from ragline.providers.memory import MemoryStore
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio


async def run_ask(*args: str, env: dict[str, str] | None = None) -> anyio.abc.Process:
    return await anyio.open_process(
        [sys.executable, "-m", "ragline", "ask", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def collect(stream: anyio.abc.ByteReceiveStream | None, into: bytearray) -> None:
    assert stream is not None
    async for chunk in stream:
        into.extend(chunk)


async def test_ask_streams_from_a_server() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=4))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        result = await anyio.run_process(
            [sys.executable, "-m", "ragline", "ask", "--url", running.url, "hello there"],
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("t0 t1 t2 t3 ")
    assert upstream.calls[0].query == "hello there"


async def test_ctrl_c_stops_generation_at_once_with_a_note() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=100_000, interval=0.05))
    out, err = bytearray(), bytearray()
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        process = await run_ask("--url", running.url, "tell me everything")
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, process.stdout, out)
            tg.start_soon(collect, process.stderr, err)
            with anyio.fail_after(30):
                (call,) = await upstream.wait_for_calls(1)
                # Synchronise on what the terminal shows, not on what the upstream sent:
                # under load a token sent may still be on its way.
                while b"t0 t1 t2 " not in out:
                    await anyio.sleep(0.01)
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                await process.wait()
            with anyio.fail_after(10):
                await call.closed.wait()
    assert process.returncode == 130
    assert b"t0 t1 t2 " in out
    assert b"[stopped by Ctrl-C after" in err
    assert call.tokens_after(interrupted) <= 1
    assert not call.finished


async def test_ask_in_process() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=2))
    async with upstream_running(upstream):
        env = {
            "RAGLINE_LLM_PROVIDER": "openai",
            "RAGLINE_LLM_BASE_URL": upstream.base_url,
            "RAGLINE_RETRIEVAL": "false",
        }
        result = await anyio.run_process(
            [sys.executable, "-m", "ragline", "ask", "in process?"],
            env={**os.environ, **env},
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "t0 t1"


async def test_ask_prints_the_answer_then_its_sources_with_title_relevance_and_snippet(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(texts=["Pip, a heron ", "[1]."]))
    text = "# Herons\n\nThe ragline **mascot** is a blue heron named Pip."
    settings_of = lambda: settings_for(upstream, retrieval=True, data_dir=str(tmp_path))  # noqa: E731
    async with (
        upstream_running(upstream),
        serve(settings_of(), embedder=WordEmbedder(), store=MemoryStore()) as running,
    ):
        store = running.server.runtime.pipeline.store
        assert store is not None
        with Lifetime.root() as root:
            (vector,) = await WordEmbedder().embed([text], root)
            chunk = Chunk("c1", "mascot", 0, text, "notes/mascot.md", vector)
            await store.upsert([chunk], root)
        result = await anyio.run_process(
            [sys.executable, "-m", "ragline", "ask", "--url", running.url, "Who is the mascot?"],
            check=False,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "Pip, a heron [1]."
    assert lines[2] == "Sources"
    assert lines[3].startswith("[1] mascot.md: Herons (similarity ")
    assert lines[4] == "    The ragline mascot is a blue heron named Pip."


async def test_ask_goes_to_the_server_that_owns_the_data_directory(tmp_path: Path) -> None:
    """`make serve` in one terminal, `ragline ask` in another: the server owns the data
    directory's store, so the question goes to it (as `ragline ingest` hands it jobs)."""
    upstream = FakeUpstream(lambda body: Behavior(texts=["from ", "the ", "server "], tokens=3))
    async with upstream_running(upstream):
        data = tmp_path / "data"
        port = free_port()
        env = {
            **os.environ,
            "RAGLINE_DATA_DIR": str(data),
            "RAGLINE_LLM_PROVIDER": "openai",
            "RAGLINE_LLM_BASE_URL": upstream.base_url,
            "RAGLINE_LLM_MODEL": "fake-model",
            "RAGLINE_RETRIEVAL": "false",
        }
        async with owning_server(env, port):
            asked = await anyio.run_process(
                [sys.executable, "-m", "ragline", "ask", "hello there"], env=env, check=False
            )
    assert asked.returncode == 0, asked.stderr.decode()[-800:]
    assert asked.stdout.decode().startswith("from the server ")
    assert upstream.calls[0].query == "hello there"
