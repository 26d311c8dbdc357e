"""Keep-alive HTTP/1.1 connections to a model server, on asyncio, parsed by httptools.

The upstream call was the largest single part of what a plain request cost ragline. A
minimal proxy measured here (uvicorn with httptools and uvloop, 20 tokens streamed from
the fake upstream, a JSON answer) spent 455 µs of CPU a request with aiohttp's client and
310 µs over a bare httptools connection that does only what the call needs (POST, stream
the body, keep the connection alive). This pool is that connection. It is what
``StreamingClient`` uses on asyncio when no proxy is configured.

The lifecycle rules are aiohttp's: a request waiting for a free connection leaves the
queue when its owner goes away, and an answer not read to its end closes its connection,
which is what tells the upstream to stop generating.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import httptools

from ..errors import StageTimeout, UpstreamError

__all__ = ["Pool", "Response"]

_PAUSE_AT = 1 << 20  # bytes buffered before the socket stops being read
_IDLE_EXPIRY = 4.0  # seconds: under uvicorn's 5 s keep-alive, so a reused one is alive


class Response(asyncio.Protocol):
    """One connection, and the answer it is reading now."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.retry_after: str | None = None
        self.idle_since = 0.0
        self._begin()

    def _begin(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._headers: asyncio.Future[None] | None = None
        self._header_name = b""
        self.complete = False
        self._keep_alive = False
        self.lost: str | None = None
        self.retry_after = None

    # -- the protocol (called by the loop) -----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lose(f"malformed HTTP from the upstream: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if not self.complete:
            self._lose("the upstream closed the connection" + (f": {exc}" if exc else ""))

    def pause_writing(self) -> None:  # a request body is small: nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # -- the parser's callbacks --------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()  # valid only until the body ends
        if self._headers is not None and not self._headers.done():
            self._headers.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._buffer.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_AT and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- what the pool's user calls ----------------------------------------------------
    def send(self, head: bytes, body: bytes) -> asyncio.Future[None]:
        """Write a request; the future is done when the answer's headers are in."""
        assert self.transport is not None
        self._begin()
        self._headers = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return self._headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The answer's body, as it arrives: whatever is buffered, in one piece."""
        while True:
            if self._buffer:
                data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
                self._buffer.clear()
                if self._buffered > _PAUSE_AT and self.transport is not None:
                    self.transport.resume_reading()
                self._buffered = 0
                yield data
                continue
            if self.complete:
                return
            if self.lost is not None:
                raise UpstreamError(f"upstream unreachable: {self.lost}")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def reusable(self) -> bool:
        return (
            self.complete
            and self.lost is None
            and self._keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lose(self, why: str) -> None:
        self.lost = why
        headers = self._headers
        if headers is not None and not headers.done():
            headers.set_exception(UpstreamError(f"upstream unreachable: {why}"))
        self._wake()
        self.close()


class Pool:
    """At most ``max_connections`` keep-alive connections, over every host."""

    def __init__(self, max_connections: int, connect_timeout: float, *, stage: str) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout
        self._stage = stage
        self._idle: dict[tuple[str, str, int], list[Response]] = {}
        self._open: set[Response] = set()
        self._tls: ssl.SSLContext | None = None
        self._heads: dict[str, tuple[tuple[str, str, int], bytes]] = {}

    @asynccontextmanager
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> AsyncIterator[Response]:
        """POST ``body``; the response, its headers read, held open for the block."""
        key, head = self._head(url, headers, len(body))
        async with self._slots:
            conn = await self._connection(key)
            try:
                await conn.send(head, body)
                yield conn
            except BaseException:
                conn.close()  # not read to its end: the upstream learns nobody listens
                raise
            if conn.reusable():
                conn.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(conn)
            else:
                conn.close()

    def forget(self, conn: Response) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    async def _connection(self, key: tuple[str, str, int]) -> Response:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < _IDLE_EXPIRY and conn.reusable():
                return conn
            conn.close()
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Response(self, key), host, port, ssl=tls
                )
        except TimeoutError:
            raise StageTimeout(
                self._stage, self._connect_timeout, "upstream timed out: connect"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}: {exc}") from None
        self._open.add(conn)
        return conn

    def _head(
        self, url: str, headers: dict[str, str], length: int
    ) -> tuple[tuple[str, str, int], bytes]:
        known = self._heads.get(url)
        if known is None:
            parts = urllib.parse.urlsplit(url)
            scheme, host = parts.scheme, parts.hostname or ""
            port = parts.port or (443 if scheme == "https" else 80)
            default = port == (443 if scheme == "https" else 80)
            authority = host if default else f"{host}:{port}"
            if ":" in host:  # an IPv6 literal
                authority = f"[{host}]" if default else f"[{host}]:{port}"
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            start = f"POST {target} HTTP/1.1\r\nhost: {authority}\r\n".encode("latin-1")
            known = self._heads[url] = ((scheme, host, port), start)
        key, start = known
        lines = [start]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise UpstreamError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"content-length: %d\r\n\r\n" % length)
        return key, b"".join(lines)
