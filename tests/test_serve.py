"""SIGTERM with work in flight: the real ``ragline serve`` process, 20 live streams and a
pending non-streaming request, against the fake upstream over real sockets."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process

from conftest import RawClient, upstream_running
from ragline.server.serve import tune_collector
from upstream import Behavior, FakeUpstream

pytestmark = pytest.mark.anyio

GRACE = 5.0  # the configured grace; the process must exit within it
STREAMS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def behave(body: dict[str, object]) -> Behavior:
    if "hold" in str(body["messages"]):
        return Behavior(hold_headers=True)
    # A token every 0.2 s: "at most one token after SIGTERM" then allows for a loaded machine.
    return Behavior(tokens=100_000, interval=0.2)


@asynccontextmanager
async def server_process(
    port: int, upstream: FakeUpstream, *args: str, **env: str
) -> AsyncIterator[Process]:
    """``ragline serve`` in a child process, killed if the test fails before it exits."""
    process = await start_server(port, upstream, *args, **env)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(10, shield=True):
                await process.wait()


async def start_server(port: int, upstream: FakeUpstream, *args: str, **env: str) -> Process:
    environment = {
        **os.environ,
        "RAGLINE_LLM_PROVIDER": "openai",
        "RAGLINE_RETRIEVAL": "false",
        "RAGLINE_LLM_BASE_URL": upstream.base_url,
        "RAGLINE_LLM_MODEL": "fake-model",
        "RAGLINE_LLM_MAX_CONNECTIONS": "64",
        "RAGLINE_SHUTDOWN_GRACE": str(GRACE),
        **env,
    }
    process = await anyio.open_process(
        [sys.executable, "-m", "ragline", "serve", "--port", str(port), *args],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(60):
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        return process
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)


async def drain(process: Process, into: list[bytes]) -> None:
    assert process.stderr is not None
    async for chunk in process.stderr:
        into.append(chunk)


async def open_streams(port: int, count: int) -> list[RawClient]:
    """``count`` SSE streams on the native route, each past its first delta."""
    streams = []
    for i in range(count):
        client = await RawClient.connect(port)
        await client.send("GET", f"/api/v1/inference/stream?query=s{i}")
        streams.append(client)
    with anyio.fail_after(30):
        for client in streams:
            await client.read_until(b'data: {"delta"')
    return streams


async def sigterm(process: Process, bound: float = GRACE + 10) -> float:
    """Send SIGTERM and wait for the exit; the seconds it took."""
    signalled_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    with anyio.fail_after(bound):
        await process.wait()
    return time.monotonic() - signalled_at


# The default (httptools, uvloop) and the pure-Python pair it can be switched to.
SERVERS = {"default": {}, "h11-asyncio": {"RAGLINE_HTTP": "h11", "RAGLINE_LOOP": "asyncio"}}


@pytest.mark.parametrize("server", SERVERS)
async def test_sigterm_cancels_every_stream_and_exits_within_the_grace(server: str) -> None:
    upstream = FakeUpstream(behave)
    port = free_port()
    stderr: list[bytes] = []
    async with (
        upstream_running(upstream),
        server_process(port, upstream, **SERVERS[server]) as process,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(drain, process, stderr)
        streams = await open_streams(port, STREAMS)
        pending = await RawClient.connect(port)
        await pending.send("POST", "/api/v1/inference/chat", json.dumps({"query": "hold"}).encode())
        with anyio.fail_after(30):
            calls = await upstream.wait_for_calls(STREAMS + 1)

        signalled_at = time.monotonic()
        exited_after = await sigterm(process)

        bodies = [await client.read_all() for client in streams]
        answer = await pending.read_all()
        for client in [*streams, pending]:
            await client.close()
        tg.cancel_scope.cancel()

    assert exited_after < GRACE, f"exit took {exited_after:.2f}s"
    print(f"SIGTERM to exit with {STREAMS} streams: {exited_after:.3f}s")
    for body in bodies:
        assert b"event: error" in body
        assert b'"cause":"shutdown"' in body
        assert body.endswith(b"0\r\n\r\n"), "the stream was not ended cleanly"
    assert answer.startswith(b"HTTP/1.1 503")
    assert b'"cause":"shutdown"' in answer
    for call in calls:
        assert call.closed.is_set()
        assert call.closed_at is not None
        assert call.closed_at - signalled_at < GRACE
        assert call.tokens_after(signalled_at) <= 1
        assert not call.finished
    lines = [json.loads(line) for line in b"".join(stderr).splitlines() if line.startswith(b"{")]
    access = [
        line for line in lines if line["logger"] == "ragline.access" and line["path"] != "/readyz"
    ]
    assert len(access) == STREAMS + 1
    assert all(line["status"] == 503 and line["cause"] == "shutdown" for line in access)
    assert process.returncode in (0, -signal.SIGTERM)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_sigterm_removes_the_server_marker_and_still_ends_as_sigterm(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(behave)
    port = free_port()
    marker = tmp_path / "server.json"
    async with upstream_running(upstream):
        process = await start_server(port, upstream, RAGLINE_DATA_DIR=str(tmp_path))
        try:
            assert json.loads(marker.read_text())["pid"] == process.pid
            await sigterm(process)
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(10, shield=True):
                    await process.wait()
    assert not marker.exists(), "SIGTERM left server.json behind"
    assert process.returncode == -signal.SIGTERM  # a supervisor sees what it sent


async def test_with_two_worker_processes_sigterm_cancels_every_stream_in_both() -> None:
    """``serve --workers 2``: two processes accept on one socket; SIGTERM to the parent
    reaches both, each cancels its streams with cause shutdown, and all exit."""
    upstream = FakeUpstream(behave)
    port = free_port()
    async with (
        upstream_running(upstream),
        server_process(port, upstream, "--workers", "2") as process,
    ):
        children = children_of(process.pid)
        streams = await open_streams(port, 8)
        with anyio.fail_after(30):
            calls = await upstream.wait_for_calls(8)
        exited_after = await sigterm(process)
        bodies = [await client.read_all() for client in streams]
        for client in streams:
            await client.close()
    assert len(children) == 2
    assert not any(alive(child) for child in children)
    assert exited_after < GRACE + 2, f"exit took {exited_after:.2f}s"
    for body in bodies:
        assert b'"cause":"shutdown"' in body
    for call in calls:
        assert call.closed.is_set()
        assert not call.finished


async def test_several_workers_refuse_state_that_one_process_owns(tmp_path: Path) -> None:
    process = await anyio.run_process(
        [sys.executable, "-m", "ragline", "serve", "--workers", "2"],
        env={**os.environ, "RAGLINE_DATA_DIR": str(tmp_path), "RAGLINE_LLM_PROVIDER": "openai"},
        check=False,
    )
    assert process.returncode == 2
    assert b"RAGLINE_VECTOR_URI" in process.stderr
    assert b"RAGLINE_DATABASE_URL" in process.stderr


def short_or_long(body: dict[str, object]) -> Behavior:
    # "short" finishes 2 s after it starts; anything else would run for hours.
    return Behavior(tokens=10 if "short" in str(body["messages"]) else 100_000, interval=0.2)


async def test_a_drain_window_lets_a_short_stream_finish_and_ends_a_long_one_at_its_end() -> None:
    """Rolling deploys: with RAGLINE_DRAIN_SECONDS, SIGTERM makes /readyz answer 503 at
    once while work in flight goes on; at the window's end the rest is cancelled with
    cause shutdown and a final event, and the process exits within the grace."""
    window = 3.0
    upstream = FakeUpstream(short_or_long)
    port = free_port()
    stderr: list[bytes] = []
    env = {"RAGLINE_DRAIN_SECONDS": str(window)}
    async with (
        upstream_running(upstream),
        server_process(port, upstream, **env) as process,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(drain, process, stderr)
        short, long = await RawClient.connect(port), await RawClient.connect(port)
        await short.send("GET", "/api/v1/inference/stream?query=short")
        await long.send("GET", "/api/v1/inference/stream?query=long")
        with anyio.fail_after(30):
            await short.read_until(b'data: {"delta"')
            await long.read_until(b'data: {"delta"')
        signalled_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(5):
                while (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code != 503:
                    await anyio.sleep(0.02)
        not_ready_after = time.monotonic() - signalled_at
        with anyio.fail_after(window + 5):
            finished = await short.read_until(b"0\r\n\r\n")
        short_done_after = time.monotonic() - signalled_at
        with anyio.fail_after(window + GRACE + 5):
            ended = await long.read_all()
        long_done_after = time.monotonic() - signalled_at
        with anyio.fail_after(GRACE + 5):
            await process.wait()
        exited_after = time.monotonic() - signalled_at
        for client in (short, long):
            await client.close()
        tg.cancel_scope.cancel()

    assert not_ready_after < 1.0, f"/readyz still ready {not_ready_after:.2f}s after SIGTERM"
    assert b"event: done" in finished
    assert b'"finish_reason":"stop"' in finished
    assert short_done_after < window
    assert b"event: error" in ended
    assert b'"cause":"shutdown"' in ended
    assert ended.endswith(b"0\r\n\r\n"), "the long stream was not ended cleanly"
    assert window - 0.5 <= long_done_after < window + GRACE
    assert exited_after < window + GRACE
    short_call, long_call = sorted(upstream.calls, key=lambda c: "short" not in str(c.body))
    assert short_call.finished
    assert long_call.closed.is_set()
    assert long_call.closed_at is not None
    assert long_call.closed_at - signalled_at >= window - 0.5
    assert process.returncode in (0, -signal.SIGTERM)


async def test_a_second_signal_ends_the_drain_window_at_once() -> None:
    upstream = FakeUpstream(short_or_long)
    port = free_port()
    async with (
        upstream_running(upstream),
        server_process(port, upstream, RAGLINE_DRAIN_SECONDS="60") as process,
    ):
        stream = await RawClient.connect(port)
        await stream.send("GET", "/api/v1/inference/stream?query=long")
        with anyio.fail_after(30):
            await stream.read_until(b'data: {"delta"')
        process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(5):
                while (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code != 503:
                    await anyio.sleep(0.02)
        exited_after = await sigterm(process)
        ended = await stream.read_all()
        await stream.close()
    assert exited_after < GRACE, f"exit took {exited_after:.2f}s of a 60 s window"
    assert b'"cause":"shutdown"' in ended


async def test_refuses_a_public_address_without_api_keys() -> None:
    result = await anyio.run_process(
        [sys.executable, "-m", "ragline", "serve", "--host", "0.0.0.0", "--port", "0"],
        check=False,
    )
    assert result.returncode == 2
    assert b"RAGLINE_API_KEYS" in result.stderr


async def test_sigterm_stops_the_local_model_and_its_queue(tmp_path: Path) -> None:
    """The same shutdown with the embedded defaults: one stream decoding on SmolLM2, two
    waiting in the model's queue, a retrieval through MiniLM and Milvus Lite before each."""
    port = free_port()
    stderr: list[bytes] = []
    local = {
        "RAGLINE_LLM_PROVIDER": "local",
        "RAGLINE_LLM_MODEL": "smollm2-135m-instruct",
        "RAGLINE_RETRIEVAL": "true",
        "RAGLINE_DATA_DIR": str(tmp_path),
        "RAGLINE_LLM_MAX_TOKENS": "2000",
        "RAGLINE_LOG_LEVEL": "DEBUG",
        "RAGLINE_ANSWER_SHAPE": "generate",  # the model decoding is what SIGTERM must stop
    }
    async with (
        server_process(port, FakeUpstream(), **local) as process,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(drain, process, stderr)
        streams = []
        for i in range(3):
            client = await RawClient.connect(port)
            query = f"Write a very long story number {i} about a heron.".replace(" ", "%20")
            await client.send("GET", f"/api/v1/inference/stream?query={query}")
            streams.append(client)
            if i == 0:  # the first decodes; the others queue behind it
                with anyio.fail_after(60):
                    await client.read_until(b'data: {"delta"', count=2)
        with anyio.fail_after(60):
            while b"".join(stderr).count(b"waiting for the local model") < 3:
                await anyio.sleep(0.05)
        exited_after = await sigterm(process)
        bodies = [await client.read_all() for client in streams]
        for client in streams:
            await client.close()
        tg.cancel_scope.cancel()
    assert exited_after < GRACE, f"exit took {exited_after:.2f}s"
    print(f"SIGTERM to exit with the local model decoding: {exited_after:.3f}s")
    for body in bodies:
        assert b"event: error" in body
        assert b'"cause":"shutdown"' in body
    lines = [json.loads(line) for line in b"".join(stderr).splitlines() if line.startswith(b"{")]
    stopped = [line for line in lines if line["msg"] == "local generation stopped"]
    assert len(stopped) == 1, "only the decoding request ran; the queued ones never did"
    assert stopped[0]["cause"] == "shutdown"
    assert stopped[0]["decoded_after_stop"] <= 1


def test_the_server_raises_its_open_file_limit_to_the_hard_limit() -> None:
    # A shell's soft default (1,024) holds about 500 streams; production servers lift it.
    import resource

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stderr)\n"
        "from ragline.server.serve import raise_open_file_limit\n"
        "print(raise_open_file_limit())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=lowered, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "4096"
    assert "open-file limit is 4096" in done.stderr  # still low: the start says so


def test_tune_collector_raises_the_thresholds_and_returns_the_old_ones() -> None:
    """tune_collector raises the thresholds (a full collection walks every held stream's
    objects, stopping them all) and says what they were."""
    before = gc.get_threshold()
    try:
        assert tune_collector() == before
        assert gc.get_threshold()[0] >= 10 * 700
    finally:
        gc.set_threshold(*before)
