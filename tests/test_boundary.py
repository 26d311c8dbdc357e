"""A client disconnect at any stage cancels everything below it at once.

Every test runs a real uvicorn server and a real fake upstream on 127.0.0.1, hangs up a
real socket, and checks what the upstream saw, the 499 access log line, the metrics and
the span's cancel cause.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import anyio
import httpx
import pytest
from openai import AsyncOpenAI

from conftest import LogCapture, RawClient, Running, serve, settings_for, upstream_running
from ragline import Hit, Lifetime
from ragline.access import Readable
from upstream import Behavior, Call, FakeUpstream

pytestmark = pytest.mark.anyio

PROMPT = json.dumps({"query": "what is ragline?"}).encode()
CLOSE_BOUND = 2.0  # generous: these machines are shared and noisy


class OneVectorEmbedder:
    model = "test-embedder"
    dimensions = 3

    async def embed(
        self, texts: Sequence[str], lifetime: Lifetime, *, kind: str = "document"
    ) -> list[list[float]]:
        await lifetime.checkpoint()
        return [[1.0, 0.0, 0.0] for _ in texts]


class SlowStore:
    """A vector store whose search never finishes on its own."""

    def __init__(self) -> None:
        self.searching = anyio.Event()
        self.cancelled = anyio.Event()

    async def search(
        self,
        vector: Sequence[float],
        top_k: int,
        lifetime: Lifetime,
        *,
        readable: Readable,
        collection: str | None = None,
    ) -> list[Hit]:
        self.searching.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()
        return []


def slow_tokens(body: object) -> Behavior:
    return Behavior(tokens=10_000, interval=0.05)


async def assert_cut_short(
    running: Running,
    logs: LogCapture,
    request_id: str,
    route: str,
    call: Call | None,
    hung_up_at: float,
) -> None:
    """The common proof: upstream closed promptly, ≤ 1 token after the hang-up, 499 logged
    and counted, and the cause on the spans."""
    with anyio.fail_after(10):
        line = await logs.wait_for(logs.access(request_id))
    assert line.status == 499
    assert line.cause == "client_disconnected"
    if call is not None:
        with anyio.fail_after(10):
            await call.closed.wait()
        assert call.closed_at is not None
        assert call.closed_at - hung_up_at < CLOSE_BOUND
        assert call.tokens_after(hung_up_at) <= 1
        assert not call.finished
    assert running.metric("ragline_requests_total", route=route, outcome="499") == 1
    assert (
        running.metric("ragline_cancellations_total", cause="client_disconnected", owner="request")
        == 1
    )
    spans = [s for s in running.finished_spans() if s.attributes.get("ragline.cancel.reason")]
    assert spans, "no span recorded the cancellation"
    for span in spans:
        assert span.attributes["ragline.cancel.reason"] == "client_disconnected"
        assert span.attributes["ragline.cancel.origin"] == "app/request"
        assert span.status.status_code.name == "UNSET"
        assert any(e.name == "ragline.cancelled" for e in span.events)


async def test_disconnect_during_slow_retrieval_cancels_it_and_never_calls_the_model(
    logs: LogCapture,
) -> None:
    store = SlowStore()
    upstream = FakeUpstream()
    async with (
        upstream_running(upstream),
        serve(
            settings_for(upstream, retrieval=True), embedder=OneVectorEmbedder(), store=store
        ) as running,
    ):
        client = await RawClient.connect(running.port)
        await client.send("POST", "/api/v1/inference/chat", PROMPT, {"x-request-id": "r1"})
        with anyio.fail_after(10):
            await store.searching.wait()
        hung_up_at = time.monotonic()
        await client.close()
        with anyio.fail_after(CLOSE_BOUND):
            await store.cancelled.wait()
        await assert_cut_short(running, logs, "r1", "/api/v1/inference/chat", None, hung_up_at)
        assert upstream.calls == []
        assert running.span("ragline.retrieve").attributes["ragline.cancel.reason"] == (
            "client_disconnected"
        )


async def test_disconnect_while_upstream_withholds_headers_closes_upstream(
    logs: LogCapture,
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(hold_headers=True))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        client = await RawClient.connect(running.port)
        await client.send("POST", "/api/v1/inference/chat", PROMPT, {"x-request-id": "r2"})
        with anyio.fail_after(10):
            (call,) = await upstream.wait_for_calls(1)
        hung_up_at = time.monotonic()
        await client.close()
        await assert_cut_short(running, logs, "r2", "/api/v1/inference/chat", call, hung_up_at)
        assert call.token_times == []
        generate = running.span("chat fake-model")
        assert generate.attributes["ragline.cancel.reason"] == "client_disconnected"
        assert running.metric("ragline_upstream_close_after_cancel_seconds_count") == 1


async def test_disconnect_mid_stream_on_sse_route(logs: LogCapture) -> None:
    upstream = FakeUpstream(slow_tokens)
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        client = await RawClient.connect(running.port)
        await client.send(
            "GET", "/api/v1/inference/stream?query=hello&top_k=2", headers={"x-request-id": "r3"}
        )
        with anyio.fail_after(10):
            received = await client.read_until(b'data: {"delta"', count=3)
        assert b"text/event-stream" in received
        hung_up_at = time.monotonic()
        await client.close()
        (call,) = upstream.calls
        await assert_cut_short(running, logs, "r3", "/api/v1/inference/stream", call, hung_up_at)
        span = running.span("chat fake-model")
        assert span.attributes["gen_ai.usage.output_tokens"] >= 3
        assert span.attributes["gen_ai.response.finish_reasons"] == ("cancelled",)


async def test_disconnect_mid_stream_with_the_openai_sdk(logs: LogCapture) -> None:
    upstream = FakeUpstream(slow_tokens)
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        sdk = AsyncOpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            extra_headers={"x-request-id": "r4"},
        )
        pieces = []
        with anyio.fail_after(10):
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 3:
                    break
        hung_up_at = time.monotonic()
        await stream.close()
        await sdk.close()
        assert pieces == ["t0 ", "t1 ", "t2 "]
        (call,) = upstream.calls
        await assert_cut_short(running, logs, "r4", "/v1/chat/completions", call, hung_up_at)


async def test_disconnect_during_non_streaming_call(logs: LogCapture) -> None:
    upstream = FakeUpstream(slow_tokens)
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        client = await RawClient.connect(running.port)
        await client.send("POST", "/api/v1/inference/chat", PROMPT, {"x-request-id": "r5"})
        with anyio.fail_after(10):
            (call,) = await upstream.wait_for_calls(1)
            await call.producing.wait()
        hung_up_at = time.monotonic()
        await client.close()
        await assert_cut_short(running, logs, "r5", "/api/v1/inference/chat", call, hung_up_at)


async def test_request_waiting_for_a_connection_slot_is_never_sent_once_its_client_left(
    logs: LogCapture,
) -> None:
    release = anyio.Event()

    def behave(body: dict[str, object]) -> Behavior:
        if "first" in str(body["messages"]):
            return Behavior(tokens=3, gate_after=1, release=release)
        return Behavior(tokens=2)

    upstream = FakeUpstream(behave)
    async with (
        upstream_running(upstream),
        serve(settings_for(upstream, llm_max_connections=1)) as running,
    ):
        first = await RawClient.connect(running.port)
        await first.send(
            "POST",
            "/api/v1/inference/chat",
            json.dumps({"query": "first"}).encode(),
            {"x-request-id": "first"},
        )
        with anyio.fail_after(10):
            (call,) = await upstream.wait_for_calls(1)
            await call.producing.wait()
        queued = await RawClient.connect(running.port)
        await queued.send(
            "POST",
            "/api/v1/inference/chat",
            json.dumps({"query": "queued"}).encode(),
            {"x-request-id": "queued"},
        )
        with anyio.fail_after(10):
            await logs.wait_for(
                lambda r: (
                    r.getMessage() == "upstream request queued"
                    and getattr(r, "request_id", None) == "queued"
                )
            )
        await queued.close()
        with anyio.fail_after(10):
            line = await logs.wait_for(logs.access("queued"))
        assert line.status == 499
        release.set()
        with anyio.fail_after(10):
            answer = await first.read_until(b"}}")
        assert b"200 OK" in answer
        await first.close()
        async with httpx.AsyncClient(base_url=running.url) as http:
            response = await http.post("/api/v1/inference/chat", json={"query": "third"})
        assert response.status_code == 200
        assert [c.query for c in upstream.calls] == ["first", "third"]


async def test_request_deadline_is_a_504_and_a_timeout_not_a_cancellation(
    logs: LogCapture,
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(hold_headers=True))
    async with (
        upstream_running(upstream),
        serve(settings_for(upstream, request_deadline=0.3)) as running,
    ):
        async with httpx.AsyncClient(base_url=running.url) as http:
            response = await http.post(
                "/api/v1/inference/chat", json={"query": "slow"}, headers={"x-request-id": "d1"}
            )
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "timeout"
            async with http.stream(
                "GET", "/api/v1/inference/stream?query=slow", headers={"x-request-id": "d2"}
            ) as stream:
                assert stream.status_code == 200
                body = (await stream.aread()).decode()
        assert "event: error" in body
        assert '"code":"timeout"' in body
        assert '"cause":"deadline"' in body
        line = await logs.wait_for(logs.access("d1"))
        assert line.status == 504
        assert line.cause == "deadline"
        assert (await logs.wait_for(logs.access("d2"))).status == 504
        request_span = running.span("POST /api/v1/inference/chat")
        assert request_span.status.status_code.name == "ERROR"
        assert request_span.attributes["error.type"] == "timeout"
        assert "ragline.cancel.reason" not in request_span.attributes
        generate = running.span("chat fake-model")
        assert generate.attributes["ragline.cancel.reason"] == "deadline"
        assert generate.attributes["gen_ai.response.finish_reasons"] == ("timeout",)
        assert (
            running.metric("ragline_requests_total", route="/api/v1/inference/chat", outcome="504")
            == 1
        )
        for call in upstream.calls:
            with anyio.fail_after(10):
                await call.closed.wait()
