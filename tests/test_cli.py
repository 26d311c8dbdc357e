"""``ragline ask`` in a real terminal process: streams, and Ctrl-C stops generation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio
import pytest

from conftest import serve, settings_for, upstream_running
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
                while call.tokens_after(0) < 3:
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
