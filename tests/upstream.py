"""A fake OpenAI-compatible model server speaking HTTP/1.1 over a real socket.

It records, for every request, when it arrived, when its connection closed, and when each
token was produced, so a test can say how many tokens the upstream produced after a client
disconnect. Like vLLM it stops generating once it sees its connection close.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import h11
from anyio.abc import SocketStream, TaskStatus


@dataclass
class Behavior:
    """How the upstream answers one request."""

    tokens: int = 5
    interval: float = 0.0
    hold_headers: bool = False  # send no headers until `release` is set (or forever)
    gate_after: int | None = None  # after this many tokens wait for `release`
    release: anyio.Event | None = None
    status: int = 200
    retry_after: str | None = None  # the Retry-After header of an error status
    report_usage: bool = True
    # Tool calling: after the text tokens, stream these calls ((name, arguments JSON
    # text), the arguments in fragments) and finish with "tool_calls".
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    prompt_tokens: int = 11
    # A model caught in a loop: after the tokens above, these words one token each, again
    # and again, until the connection closes (or `loop_limit` tokens, then "length").
    loop: list[str] = field(default_factory=list)
    loop_limit: int = 10_000
    texts: list[str] = field(default_factory=list)  # the text tokens, instead of "t{i} "
    # A broken upstream: this body, verbatim, with a 200 and this content type.
    raw: bytes | None = None
    raw_type: str = "text/event-stream"


@dataclass
class Call:
    """One request as the upstream saw it."""

    body: dict[str, Any]
    received_at: float
    token_times: list[float] = field(default_factory=list)
    closed_at: float | None = None
    finished: bool = False
    closed: anyio.Event = field(default_factory=anyio.Event)
    producing: anyio.Event = field(default_factory=anyio.Event)

    @property
    def query(self) -> str:
        """The content of the last message."""
        return str(self.body["messages"][-1]["content"])

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The ``tool`` messages this request carried."""
        return tool_results(self.body)

    @property
    def offered(self) -> list[str]:
        """The names of the tools offered to the model."""
        return [t["function"]["name"] for t in self.body.get("tools") or ()]

    def tokens_after(self, moment: float) -> int:
        """How many tokens were produced after ``moment`` (``time.monotonic()``)."""
        return sum(1 for t in self.token_times if t > moment)


class FakeUpstream:
    """Serve with ``await tg.start(upstream.serve)``; read ``calls`` afterwards."""

    def __init__(self, behave: Callable[[dict[str, Any]], Behavior] | None = None) -> None:
        self.behave = behave or (lambda body: Behavior())
        self.calls: list[Call] = []
        self.connections = 0  # TCP connections accepted
        self.port = 0
        self._arrived = anyio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def wait_for_calls(self, count: int) -> list[Call]:
        """Wait until ``count`` requests have arrived."""
        while len(self.calls) < count:
            await self._arrived.wait()
        return self.calls

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                call = Call(body=json.loads(request or b"{}"), received_at=time.monotonic())
                self.calls.append(call)
                self._arrived.set()
                self._arrived = anyio.Event()
                behavior = self.behave(call.body)
                await self._respond(conn, stream, call, behavior)
                if call.closed.is_set() or conn.our_state is not h11.DONE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    async def _read_request(self, conn: h11.Connection, stream: SocketStream) -> bytes | None:
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return None
                continue
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return body
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(
        self, conn: h11.Connection, stream: SocketStream, call: Call, behavior: Behavior
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_close, conn, stream, call)
            try:
                await self._produce(conn, stream, call, behavior)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            finally:
                tg.cancel_scope.cancel()

    async def _watch_close(self, conn: h11.Connection, stream: SocketStream, call: Call) -> None:
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                call.closed_at = time.monotonic()
                call.closed.set()
                return
            conn.receive_data(data)  # a next request on a kept-alive connection

    async def _wait(self, call: Call, event: anyio.Event | None) -> bool:
        """Wait for ``event`` (forever if None) or the connection's close; True if released."""
        async with anyio.create_task_group() as tg:

            async def close_wins() -> None:
                await call.closed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(close_wins)
            if event is None:
                await anyio.sleep_forever()
            await event.wait()
            tg.cancel_scope.cancel()
        return not call.closed.is_set()

    async def _send(self, conn: h11.Connection, stream: SocketStream, event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send(data)

    async def _produce(
        self, conn: h11.Connection, stream: SocketStream, call: Call, behavior: Behavior
    ) -> None:
        if behavior.hold_headers and not await self._wait(call, behavior.release):
            return
        if behavior.status != 200:
            payload = json.dumps({"error": {"message": "upstream says no", "code": "nope"}})
            await self._send(
                conn,
                stream,
                h11.Response(
                    status_code=behavior.status,
                    headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(payload))),
                        *([("retry-after", behavior.retry_after)] if behavior.retry_after else []),
                    ],
                ),
            )
            await self._send(conn, stream, h11.Data(data=payload.encode()))
            await self._send(conn, stream, h11.EndOfMessage())
            return
        await self._send(
            conn,
            stream,
            h11.Response(
                status_code=200,
                headers=[
                    ("content-type", behavior.raw_type if behavior.raw else "text/event-stream"),
                    ("transfer-encoding", "chunked"),
                ],
            ),
        )
        model = call.body.get("model", "fake")
        if behavior.raw is not None:
            await self._send(conn, stream, h11.Data(data=behavior.raw))
            await self._send(conn, stream, h11.EndOfMessage())
            call.finished = True
            return
        if behavior.texts or behavior.loop:
            await self._produce_text(conn, stream, call, behavior, model)
            return
        for i in range(behavior.tokens):
            if behavior.gate_after is not None and i == behavior.gate_after:
                if not await self._wait(call, behavior.release):
                    return
            elif behavior.interval:
                with anyio.move_on_after(behavior.interval):
                    await call.closed.wait()
            if call.closed.is_set():  # like vLLM: stop generating for a closed connection
                return
            call.token_times.append(time.monotonic())
            call.producing.set()
            await self._send(conn, stream, h11.Data(data=_chunk(model, {"content": f"t{i} "})))
        fragments = 0
        for index, (name, arguments) in enumerate(behavior.tool_calls):
            if call.closed.is_set():
                return
            head = {
                "index": index,
                "id": f"call_{len(self.calls)}_{index}",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            pieces = [arguments[i : i + 7] for i in range(0, len(arguments), 7)]
            for delta in [head, *({"index": index, "function": {"arguments": p}} for p in pieces)]:
                if behavior.interval:
                    with anyio.move_on_after(behavior.interval):
                        await call.closed.wait()
                if call.closed.is_set():
                    return
                call.token_times.append(time.monotonic())
                fragments += 1
                await self._send(
                    conn, stream, h11.Data(data=_chunk(model, {"tool_calls": [delta]}))
                )
        finish = "tool_calls" if behavior.tool_calls else "stop"
        await self._send(conn, stream, h11.Data(data=_chunk(model, {}, finish)))
        include_usage = (call.body.get("stream_options") or {}).get("include_usage")
        if include_usage and behavior.report_usage:
            completion = behavior.tokens + fragments
            usage = {
                "prompt_tokens": behavior.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": behavior.prompt_tokens + completion,
            }
            event = {
                "id": "x",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await self._send(conn, stream, h11.Data(data=f"data: {json.dumps(event)}\n\n".encode()))
        await self._send(conn, stream, h11.Data(data=b"data: [DONE]\n\n"))
        await self._send(conn, stream, h11.EndOfMessage())
        call.finished = True

    async def _produce_text(
        self,
        conn: h11.Connection,
        stream: SocketStream,
        call: Call,
        behavior: Behavior,
        model: str,
    ) -> None:
        """The given text tokens, then the loop, then usage and [DONE]."""
        produced = 0
        finish = "stop"
        pieces = iter(behavior.texts)
        while True:
            piece = next(pieces, None)
            if piece is None and behavior.loop:
                if produced >= behavior.loop_limit:
                    finish = "length"
                    break
                piece = behavior.loop[(produced - len(behavior.texts)) % len(behavior.loop)]
            if piece is None:
                break
            with anyio.move_on_after(behavior.interval):
                await call.closed.wait()
            if call.closed.is_set():
                return
            call.token_times.append(time.monotonic())
            call.producing.set()
            produced += 1
            await self._send(conn, stream, h11.Data(data=_chunk(model, {"content": piece})))
        await self._send(conn, stream, h11.Data(data=_chunk(model, {}, finish)))
        usage = {
            "prompt_tokens": behavior.prompt_tokens,
            "completion_tokens": produced,
            "total_tokens": behavior.prompt_tokens + produced,
        }
        event = {"id": "x", "object": "chat.completion.chunk", "model": model, "choices": []}
        event["usage"] = usage
        await self._send(conn, stream, h11.Data(data=f"data: {json.dumps(event)}\n\n".encode()))
        await self._send(conn, stream, h11.Data(data=b"data: [DONE]\n\n"))
        await self._send(conn, stream, h11.EndOfMessage())
        call.finished = True


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tool`` messages of a chat completions request body: how far a scripted
    tool exchange has gone."""
    return [m for m in body["messages"] if m.get("role") == "tool"]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n".encode()
