"""Added latency and throughput for ``bench/compare.py``: keep-alive HTTP/1.1 clients on
raw asyncio streams, cheap per request, so that the server is what is measured.

- ``sequential``: one connection, one request after another; each request's time.
- ``throughput``: ``connections`` keep-alive connections spread over ``processes``
  client processes (one event loop each, so the client is not one core's worth of
  bottleneck), each sending its next request as soon as the last one ended, for
  ``seconds``; completed requests per second. On a 2-core machine the client processes
  share the cores with the server under test: the figure is a floor, and it is the same
  floor for every target.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from typing import Any


class KeepAlive:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> KeepAlive:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, port: int, path: str, body: dict[str, Any]) -> int:
        """Send one request, read its whole response; its status."""
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            "content-type: application/json\r\nauthorization: Bearer sk-fake\r\n"
            f"content-length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        response = await self.reader.readuntil(b"\r\n\r\n")
        status = int(response.split(b" ", 2)[1])
        lower = response.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = 0
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await self.reader.readexactly(length)
        if b"connection: close" in lower:
            raise ConnectionError("the server closed the connection")
        return status

    def close(self) -> None:
        self.writer.close()


async def sequential(port: int, path: str, body: dict[str, Any], count: int) -> list[float]:
    """Seconds per request, ``count`` requests one after another on one connection."""
    conn = await KeepAlive.open(port)
    times = []
    try:
        for _ in range(count):
            began = time.perf_counter()
            status = await conn.request(port, path, body)
            times.append(time.perf_counter() - began)
            if status != 200:
                raise RuntimeError(f"status {status}")
    finally:
        conn.close()
    return times


async def _drive(
    port: int, path: str, body: dict[str, Any], connections: int, seconds: float
) -> tuple[int, int]:
    stop_at = time.perf_counter() + seconds
    done = failed = 0

    async def one() -> None:
        nonlocal done, failed
        conn = await KeepAlive.open(port)
        try:
            while time.perf_counter() < stop_at:
                try:
                    status = await conn.request(port, path, body)
                except (ConnectionError, asyncio.IncompleteReadError):
                    failed += 1
                    conn.close()
                    conn = await KeepAlive.open(port)
                    continue
                if status == 200:
                    done += 1
                else:
                    failed += 1
        finally:
            conn.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return done, failed


def _process(args: tuple[int, str, dict[str, Any], int, float]) -> tuple[int, int]:
    return asyncio.run(_drive(*args))


def throughput(
    port: int,
    path: str,
    body: dict[str, Any],
    *,
    connections: int = 64,
    processes: int = 2,
    seconds: float = 10.0,
) -> dict[str, float]:
    """Completed requests per second at ``connections`` concurrent keep-alive
    connections, from ``processes`` client processes (blocking: run it in a thread)."""
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    began = time.perf_counter()
    with context.Pool(processes) as pool:
        results = pool.map(_process, [(port, path, body, n, seconds) for n in share])
    elapsed = time.perf_counter() - began
    done = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    return {"requests_per_s": done / seconds, "failed": failed, "elapsed_s": elapsed}
