"""A small HTTP/1.1 client on asyncio streams for the benchmarks: cheap enough to hold
thousands of streams from one process, and it hangs up exactly when told to.

Tokens are counted in what arrives, whatever the protocol: the fake upstream's tokens
are ``t0 ``, ``t1 ``, … and every proxy passes them through as text.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

TOKEN = re.compile(rb"t\d+ ")


@dataclass
class Exchange:
    """One request: what came back, and when."""

    status: int = 0
    head_at: float | None = None
    first_token_at: float | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # the server finished the response (or closed the connection)
    error: str | None = None

    @property
    def tokens(self) -> int:
        return len(TOKEN.findall(self.body))


class Connection:
    """One connection, one request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.exchange = Exchange()
        self._tokens_seen = 0
        self._changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    async def request(
        cls,
        port: int,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = cls(reader, writer)
        data = json.dumps(body).encode()
        head = [
            f"POST {path} HTTP/1.1",
            f"host: 127.0.0.1:{port}",
            "content-type: application/json",
            "accept: text/event-stream, application/json",
            "authorization: Bearer sk-fake",
            f"content-length: {len(data)}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        conn._pump = asyncio.ensure_future(conn._read())
        return conn

    async def _read(self) -> None:
        ex = self.exchange
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            ex.head_at = time.monotonic()
            ex.status = int(head.split(b" ", 2)[1])
            chunked = b"transfer-encoding: chunked" in head.lower()
            length = None
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while True:
                if chunked:
                    size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                    if size == 0:
                        break
                    data = await self.reader.readexactly(size + 2)
                    self._got(data[:-2])
                elif length is not None:
                    if length == 0:
                        break
                    data = await self.reader.read(min(length, 65536))
                    if not data:
                        break
                    length -= len(data)
                    self._got(data)
                else:
                    data = await self.reader.read(65536)
                    if not data:
                        break
                    self._got(data)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            ex.error = type(exc).__name__
        except ValueError as exc:
            ex.error = f"bad response: {exc}"
        ex.ended = True
        self._changed.set()

    def _got(self, data: bytes) -> None:
        ex = self.exchange
        ex.body += data
        if ex.first_token_at is None and TOKEN.search(ex.body):
            ex.first_token_at = time.monotonic()
        self._changed.set()

    async def wait_tokens(self, count: int) -> bool:
        """Wait until ``count`` tokens arrived; False if the response ended first."""
        while self.exchange.tokens < count:
            if self.exchange.ended:
                return False
            self._changed.clear()
            await self._changed.wait()
        return True

    async def wait_end(self) -> None:
        """Until the server ends the response or closes the connection."""
        if self._pump is not None:
            await asyncio.shield(self._pump)

    def hang_up(self) -> float:
        """Close the connection as a browser tab would; the moment it was closed."""
        if self._pump is not None:
            self._pump.cancel()
        self.writer.close()
        return time.monotonic()
