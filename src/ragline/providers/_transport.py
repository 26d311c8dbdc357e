"""Streaming POSTs to a model server: ragline's own pool on asyncio, httpx elsewhere.

The upstream call is most of what a request costs ragline. Measured on one machine
(``bench/compare.py``, 20-token streamed answers, keep-alive): httpx spent 1.03 ms of CPU
per request, httpcore used directly 0.77 ms, aiohttp 0.33 ms, and the httptools-parsed
pool in ``_pool`` (what ``ragline serve`` uses on asyncio) about a fifth of aiohttp's.
Through a proxy (``HTTP(S)_PROXY``) the same calls go through aiohttp; under trio,
through httpx: with the same errors and the same closing on cancel.
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from ..errors import RagLineError, StageTimeout, UpstreamError
from ._http import ClientShards
from ._pool import Pool

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Answer", "StreamingClient", "retry_after_seconds"]


class Answer:
    """An upstream answer whose body is read as it arrives."""

    def __init__(
        self,
        status: int,
        chunks: Callable[[], AsyncIterator[bytes]],
        retry_after: str | None = None,
        close: Callable[[], object] | None = None,
    ) -> None:
        self.status = status
        self._chunks = chunks
        self.retry_after = retry_after_seconds(retry_after)  # the upstream's Retry-After, if any
        self._close = close

    def abort(self) -> None:
        """Close the connection now, from outside the task reading it (a cancellation's
        hook): the upstream learns at once that nobody listens. Where the connection can
        only be closed from its task (httpx), its task closes it as it unwinds."""
        if self._close is not None:
            self._close()

    async def text(self) -> AsyncIterator[str]:
        """The body as text, one piece per read from the socket."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for chunk in self._chunks():
            text = decoder.decode(chunk)
            if text:
                yield text

    async def head(self, limit: int) -> bytes:
        """The first ``limit`` bytes or so of the body (for an error's message)."""
        body = b""
        async for chunk in self._chunks():
            body += chunk
            if len(body) > limit:
                break
        return body


class StreamingClient:
    """A pool of at most ``max_connections`` keep-alive connections for streamed POSTs.

    A request waiting for a free connection whose owner goes away leaves the queue
    without being sent; a request cancelled while its answer streams closes its
    connection. Transport errors become :class:`UpstreamError`, a connect timeout
    :class:`StageTimeout`.
    """

    def __init__(self, max_connections: int, connect_timeout: float, *, stage: str) -> None:
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._stage = stage
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shards: ClientShards | None = None
        self._pool: Pool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._proxies: dict[str, str | None] = {}
        self.is_closed = False

    async def aclose(self) -> None:
        """Close every connection."""
        self.is_closed = True
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._shards is not None:
            await self._shards.aclose()
            self._shards = None

    @asynccontextmanager
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> AsyncIterator[Answer]:
        """POST ``body`` (JSON) and hold the answer open for the block."""
        headers = {"content-type": "application/json", **headers}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio
            opened = self._httpx(url, body, headers)
        else:
            proxy = self._proxies.get(url, _NO_PROXY)
            if proxy is _NO_PROXY:
                proxy = self._proxies[url] = _proxy_for(url)
            if proxy is None:
                opened = self._pooled(url, body, headers, loop)
            else:
                opened = self._aiohttp(url, body, headers, loop, proxy)
        async with opened as answer:
            yield answer

    def _timeout(self, name: str) -> StageTimeout:
        return StageTimeout(self._stage, self._connect_timeout, f"upstream timed out: {name}")

    def _unreachable(self, exc: BaseException) -> UpstreamError:
        return UpstreamError(f"upstream unreachable: {type(exc).__name__}: {exc}")

    @asynccontextmanager
    async def _pooled(
        self, url: str, body: bytes, headers: dict[str, str], loop: asyncio.AbstractEventLoop
    ) -> AsyncIterator[Answer]:
        pool = self._pool
        if pool is None or self._pool_loop is not loop:
            self._pool_loop = loop
            pool = self._pool = Pool(
                self._max_connections, self._connect_timeout, stage=self._stage
            )
        async with pool.post(url, body, headers) as response:
            yield Answer(response.status, response.chunks, response.retry_after, response.close)

    @asynccontextmanager
    async def _aiohttp(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        loop: asyncio.AbstractEventLoop,
        proxy: str,
    ) -> AsyncIterator[Answer]:
        import aiohttp

        session = self._session
        if session is None or session.closed or self._loop is not loop:
            self._loop = loop
            # Read and pool waits are bounded by the caller's own deadlines.
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, sock_read=None
                ),
                # aiohttp's trust_env reads ~/.netrc on a thread for every request
                # (measured: a third of the CPU); the proxy is looked up once instead.
                trust_env=False,
                skip_auto_headers=("user-agent",),
            )
        try:
            async with session.post(url, data=body, headers=headers, proxy=proxy) as response:
                try:
                    yield Answer(
                        response.status,
                        response.content.iter_any,
                        response.headers.get("retry-after"),
                        response.close,
                    )
                except BaseException:
                    # Not read to its end, the connection cannot serve another request:
                    # closing it now is what tells the upstream to stop generating.
                    response.close()
                    raise
        except RagLineError:
            raise  # the caller's own (a StageTimeout is a TimeoutError too)
        except TimeoutError as exc:
            raise self._timeout(type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None

    @asynccontextmanager
    async def _httpx(self, url: str, body: bytes, headers: dict[str, str]) -> AsyncIterator[Answer]:
        if self._shards is None:
            timeout = self._connect_timeout
            self._shards = ClientShards(
                self._max_connections,
                httpx.Timeout(connect=timeout, read=None, write=timeout, pool=None),
            )
        try:
            with self._shards.client() as client:
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    # Leaving the block unread closes the connection.
                    yield Answer(
                        response.status_code,
                        response.aiter_raw,
                        response.headers.get("retry-after"),
                    )
        except httpx.TimeoutException as exc:
            raise self._timeout(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None


_NO_PROXY = "-"


def _proxy_for(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY and NO_PROXY name for ``url``, as httpx would use."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After value (seconds, or an HTTP date) as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
