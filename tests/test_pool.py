"""The upstream connection pool (``ragline.providers._pool``) against raw socket servers
that misbehave in the ways real model servers and networks do."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from ragline.errors import StageTimeout, UpstreamError
from ragline.providers import _pool
from ragline.providers._pool import Pool

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the pool is asyncio's; under trio the calls go through httpx


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on a free port; its URL and the count of connections it accepted."""
    accepted: list[int] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed it: what several tests wait for
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions", accepted
    finally:
        srv.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def body_of(pool: Pool, url: str) -> bytes:
    async with pool.post(url, b"{}", {"accept": "text/event-stream"}) as response:
        return b"".join([piece async for piece in response.chunks()])


async def test_an_answer_read_to_its_end_leaves_its_connection_for_the_next() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            writer.write(OK + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async with server(answer) as (url, accepted):
        pool = Pool(4, 5.0, stage="generate")
        for _ in range(3):
            assert await body_of(pool, url) == b"data: [DONE]\n\n"
        pool.close()
    assert len(accepted) == 1


async def test_an_idle_connection_past_its_expiry_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(OK + b"0\r\n\r\n")

    monkeypatch.setattr(_pool, "_IDLE_EXPIRY", 0.0)  # every idle one has expired
    async with server(answer) as (url, accepted):
        pool = Pool(4, 5.0, stage="generate")
        await body_of(pool, url)
        await body_of(pool, url)
        pool.close()
    assert len(accepted) == 2


async def test_an_answer_left_unread_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK + chunk(b"data: one\n\n"))
        await writer.drain()
        assert await reader.read() == b""  # the client's close
        closed.set()

    async with server(answer) as (url, _):
        pool = Pool(4, 5.0, stage="generate")
        async with pool.post(url, b"{}", {}) as response:
            async for _ in response.chunks():
                break  # a cancellation or a guard stops reading here
        await asyncio.wait_for(closed.wait(), 5)


async def test_a_connection_lost_mid_answer_is_an_upstream_error() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK + chunk(b"data: one\n\n"))  # and then the connection ends

    async with server(answer) as (url, _):
        with pytest.raises(UpstreamError, match="closed the connection"):
            await body_of(Pool(4, 5.0, stage="generate"), url)


async def test_a_malformed_answer_is_an_upstream_error() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SPDY/9 banana\r\n\r\n")
        await asyncio.sleep(5)

    async with server(answer) as (url, _):
        with pytest.raises(UpstreamError, match="malformed HTTP"):
            await body_of(Pool(4, 5.0, stage="generate"), url)


async def test_a_refused_connection_is_an_upstream_error_and_a_silent_one_a_timeout() -> None:
    async with server(read_request) as (url, _):
        pass  # closed: nothing listens there now
    with pytest.raises(UpstreamError, match="unreachable"):
        await body_of(Pool(4, 5.0, stage="generate"), url)
    # A listener that never accepts, its backlog full: a connect that never completes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for sock in queued:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        with pytest.raises(StageTimeout, match="connect"):
            await body_of(Pool(4, 0.2, stage="generate"), f"http://127.0.0.1:{port}/v1")
        for sock in queued:
            sock.close()


async def test_a_request_waiting_for_a_connection_leaves_the_queue_when_cancelled() -> None:
    release = asyncio.Event()
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            requests.append(await read_request(reader))
            await release.wait()
            writer.write(OK + b"0\r\n\r\n")

    async with server(answer) as (url, _):
        pool = Pool(1, 5.0, stage="generate")
        first = asyncio.ensure_future(body_of(pool, url))
        while not requests:
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(body_of(pool, url))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await first
        await asyncio.sleep(0.1)
        pool.close()
    assert len(requests) == 1  # the cancelled one was never sent


async def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(UpstreamError, match="line break"):
        await body_of_headers(Pool(1, 5.0, stage="generate"), {"x-id": "a\r\nhost: evil"})


async def body_of_headers(pool: Pool, headers: dict[str, str]) -> None:
    async with pool.post("http://127.0.0.1:9/v1", b"{}", headers):
        pass
