"""The benchmarks' fake OpenAI-compatible model server, in a process of its own.

Every proxy under test talks to this one upstream, so what differs between them is the
proxy alone. It is written on plain asyncio streams to cost little per token, and it
records, per request, when it arrived, when its headers went out, the time of every token
it produced and when its connection closed. Like vLLM it stops generating the moment its
client (the proxy) closes the connection.

A request says how it wants to be answered inside its own text, so the directive passes
through any proxy untouched: ``[bench tag=abc tokens=200 interval=0.05 ttft=3]``.

    python bench/upstream.py --port 9000      # prints "ready <port>" when listening
    GET /_calls?tag=abc                       # what happened to the requests tagged abc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

DIRECTIVE = re.compile(r"\[bench ([^\]]*)\]")


@dataclass
class Call:
    tag: str
    stream: bool
    received_at: float
    headers_at: float | None = None
    token_times: list[float] = field(default_factory=list)
    closed_at: float | None = None  # the client closed the connection before the end
    finished: bool = False


@dataclass
class Directive:
    tag: str = ""
    tokens: int = 20
    interval: float = 0.0
    ttft: float = 0.0

    @classmethod
    def parse(cls, body: bytes) -> Directive:
        found = DIRECTIVE.search(body.decode("utf-8", "replace"))
        values: dict[str, str] = {}
        if found:
            for item in found.group(1).split():
                key, _, value = item.partition("=")
                values[key] = value
        return cls(
            tag=values.get("tag", ""),
            tokens=int(values.get("tokens", 20)),
            interval=float(values.get("interval", 0.0)),
            ttft=float(values.get("ttft", 0.0)),
        )


class Upstream:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        # A byte the close watcher read that was the start of the next request.
        self._carry: dict[asyncio.StreamReader, bytes] = {}

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._carry[reader] = b""
        try:
            while True:
                request = await _read_request(reader, self._carry.pop(reader, b""))
                if request is None:
                    return
                method, target, headers, body = request
                path = urlsplit(target).path
                if path == "/_calls":
                    await self._stats(writer, target)
                elif path.endswith("/models"):
                    await _json(writer, 200, {"object": "list", "data": [{"id": "fake-model"}]})
                elif method == "POST" and path.endswith("/chat/completions"):
                    if not await self._complete(reader, writer, body):
                        return
                else:
                    await _json(writer, 404, {"error": {"message": "no such route"}})
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._carry.pop(reader, None)
            writer.close()

    async def _stats(self, writer: asyncio.StreamWriter, target: str) -> None:
        query = parse_qs(urlsplit(target).query)
        tags = query.get("tag")
        prefix = query.get("prefix", [""])[0]
        after = float(query.get("after", ["inf"])[0])
        calls = []
        for call in self.calls:
            if (tags is not None and call.tag not in tags) or not call.tag.startswith(prefix):
                continue
            record = asdict(call)
            if "brief" in query:  # thousands of calls: counts instead of every token time
                record["tokens"] = len(call.token_times)
                record["tokens_after"] = sum(1 for t in call.token_times if t > after)
                del record["token_times"]
            calls.append(record)
        await _json(writer, 200, {"calls": calls})

    async def _complete(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        """Answer one completion; False once the client has gone."""
        try:
            payload = json.loads(body)
        except ValueError:
            await _json(writer, 400, {"error": {"message": "bad json"}})
            return True
        stream = bool(payload.get("stream"))
        usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        directive = Directive.parse(body)
        call = Call(tag=directive.tag, stream=stream, received_at=time.monotonic())
        self.calls.append(call)
        early: list[bytes] = []
        gone = asyncio.ensure_future(_closed(reader, early))  # done: the client left
        try:
            if directive.ttft and await _wait(gone, directive.ttft):
                call.closed_at = time.monotonic()
                return False
            if stream:
                ok = await self._stream(writer, call, directive, usage, gone)
            else:
                ok = await self._whole(writer, call, directive, gone)
            if not ok:
                call.closed_at = time.monotonic()
            return ok
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            if early:
                self._carry[reader] = early[0]

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        call: Call,
        directive: Directive,
        usage: bool,
        gone: asyncio.Future[None],
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        call.headers_at = time.monotonic()
        head = b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,'
        head += b'"model":"fake-model","choices":[{"index":0,"delta":{"content":"t'
        tail = b' "},"finish_reason":null}]}\n\n'
        for i in range(directive.tokens):
            if not await _token(call, directive, gone):
                return False
            _chunk(writer, head + str(i).encode() + tail)
            if writer.transport.get_write_buffer_size() > 65536 or directive.interval:
                try:
                    await writer.drain()
                except ConnectionError:
                    return False
        finish = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        _chunk(writer, f"data: {json.dumps(finish)}\n\n".encode())
        if usage:
            counts = {"prompt_tokens": 11, "completion_tokens": directive.tokens}
            counts["total_tokens"] = 11 + directive.tokens
            event = {**finish, "choices": [], "usage": counts}
            _chunk(writer, f"data: {json.dumps(event)}\n\n".encode())
        _chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            return False
        call.finished = True
        return True

    async def _whole(
        self,
        writer: asyncio.StreamWriter,
        call: Call,
        directive: Directive,
        gone: asyncio.Future[None],
    ) -> bool:
        for _ in range(directive.tokens):
            if not await _token(call, directive, gone):
                return False
        text = "".join(f"t{i} " for i in range(directive.tokens))
        call.headers_at = time.monotonic()
        await _json(
            writer,
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": "fake-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 11,
                    "completion_tokens": directive.tokens,
                    "total_tokens": 11 + directive.tokens,
                },
            },
        )
        call.finished = True
        return True


async def _closed(reader: asyncio.StreamReader, early: list[bytes]) -> None:
    """Returns when the client closes its side. A byte that arrives instead is the start
    of its next request (clients never send one mid-response): it goes to ``early`` and
    the watch ends without a verdict."""
    data = await reader.read(1)
    if data:
        early.append(data)
        await asyncio.Event().wait()  # never done: the client is still there


async def _token(call: Call, directive: Directive, gone: asyncio.Future[None]) -> bool:
    """Produce the next token (after the directive's interval); False if the client left."""
    if directive.interval and await _wait(gone, directive.interval):
        return False
    if gone.done():
        return False
    call.token_times.append(time.monotonic())
    return True


async def _wait(gone: asyncio.Future[None], seconds: float) -> bool:
    """Sleep ``seconds``; True if the client left meanwhile."""
    done, _ = await asyncio.wait({gone}, timeout=seconds)
    return bool(done)


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


async def _json(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()


async def _read_request(
    reader: asyncio.StreamReader, carry: bytes
) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = carry + await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target, headers, body


async def main(port: int) -> None:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.connection, "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().port))
