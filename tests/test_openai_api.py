"""The official ``openai`` SDK works unchanged against ragline's /v1 routes."""

from __future__ import annotations

import json
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from conftest import RawClient, Running, eventually, serve, settings_for, upstream_running
from ragline import Lifetime
from ragline.tools import ToolRegistry
from upstream import Behavior, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio


async def test_sdk_whole_streamed_and_models() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=4))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as sdk:
            models = await sdk.models.list()
            assert [m.id for m in models.data] == ["fake-model"]

            whole = await sdk.chat.completions.create(
                model="fake-model",
                messages=[
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "earlier"},
                    {"role": "assistant", "content": "reply"},
                    {"role": "user", "content": "now"},
                ],
            )
            assert whole.choices[0].message.content == "t0 t1 t2 t3 "
            assert whole.choices[0].finish_reason == "stop"
            assert whole.usage is not None
            assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (11, 4)

            stream = await sdk.chat.completions.create(
                model="fake-model",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage, finish = "", None, None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage:
                    usage = chunk.usage
            assert text == "t0 t1 t2 t3 "
            assert finish == "stop"
            assert usage is not None
            assert usage.completion_tokens == 4

            with pytest.raises(openai.NotFoundError) as missing:
                await sdk.chat.completions.create(
                    model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
                )
            assert "gpt-nope" in str(missing.value)

    sent = upstream.calls[0].body
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][-1]["content"] == "now"
    assert sent["stream"] is True


async def test_upstream_error_mid_stream_reaches_the_sdk_as_an_error() -> None:
    upstream = FakeUpstream(lambda body: Behavior(status=500))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as sdk:
            with pytest.raises(openai.APIStatusError) as failed:
                await sdk.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "hi"}]
                )
            assert failed.value.status_code == 502
            stream = await sdk.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            with pytest.raises(openai.APIError, match="upstream answered 500"):
                async for _ in stream:
                    pass


async def test_a_persistent_429_reaches_the_sdk_as_a_rate_limit_error_with_retry_after() -> None:
    upstream = FakeUpstream(lambda body: Behavior(status=429, retry_after="7"))
    async with (
        upstream_running(upstream),
        serve(settings_for(upstream, llm_retries=0)) as running,
    ):
        async with AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as sdk:
            with pytest.raises(openai.RateLimitError) as limited:
                await sdk.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "hi"}]
                )
            assert limited.value.response.headers["retry-after"] == "7"
            stream = await sdk.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            # The stream had begun: its final event carries the same code.
            with pytest.raises(openai.APIError, match="429"):
                async for _ in stream:
                    pass
        assert running.metric("ragline_upstream_responses_total", code="429") == 2


async def test_a_429_then_a_200_is_answered_200_without_the_client_seeing_the_wait() -> None:
    given = [Behavior(status=429, retry_after="1"), Behavior(tokens=3)]
    upstream = FakeUpstream(lambda body: given.pop(0) if len(given) > 1 else given[0])
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as sdk:
            reply = await sdk.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}]
            )
    assert reply.choices[0].message.content == "t0 t1 t2 "
    assert len(upstream.calls) == 2


def event(data: object) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


OK_CHUNK = {"choices": [{"index": 0, "delta": {"content": "hi "}, "finish_reason": None}]}
BROKEN = {
    "choices not objects": event({"choices": [1, 2]}),
    "delta not an object": event({"choices": [{"delta": "x"}]}),
    "usage not numbers": event(OK_CHUNK)
    + event({"choices": [], "usage": {"prompt_tokens": "many"}}),
    "cut off (no finish, no [DONE])": event(OK_CHUNK) + event(OK_CHUNK),
}


@pytest.mark.parametrize("raw", list(BROKEN.values()), ids=list(BROKEN))
async def test_a_broken_upstream_answer_is_an_upstream_error_never_a_clean_answer(
    raw: bytes,
) -> None:
    upstream = FakeUpstream(lambda body: Behavior(raw=raw))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with httpx.AsyncClient(base_url=running.url) as http:
            whole = await http.post("/api/v1/inference/chat", json={"query": "hi"})
            assert whole.status_code == 502, whole.text
            assert whole.json()["error"]["code"] == "upstream_error"
            streamed = await http.get("/api/v1/inference/stream", params={"query": "hi"})
            assert "event: error" in streamed.text
            assert '"status":502' in streamed.text
            compat = await http.post(
                "/v1/chat/completions",
                json={"model": "fake-model", "messages": [{"role": "user", "content": "x"}]},
            )
            assert compat.status_code == 502


async def test_a_whole_json_body_where_a_stream_was_asked_is_an_upstream_error() -> None:
    whole = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
    upstream = FakeUpstream(lambda body: Behavior(raw=whole, raw_type="application/json"))
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with httpx.AsyncClient(base_url=running.url) as http:
            answer = await http.post("/api/v1/inference/chat", json={"query": "hi"})
    assert answer.status_code == 502
    assert "not an event stream" in answer.json()["error"]["message"]


async def test_the_clients_max_tokens_is_clamped_to_the_servers_bound() -> None:
    upstream = FakeUpstream(lambda body: Behavior(tokens=2))
    async with (
        upstream_running(upstream),
        serve(settings_for(upstream, llm_max_tokens=256)) as running,
    ):
        async with httpx.AsyncClient(base_url=running.url) as http:
            for asked in (10**20, 100):
                answer = await http.post(
                    "/v1/chat/completions",
                    json={
                        "model": "fake-model",
                        "max_tokens": asked,
                        "messages": [{"role": "user", "content": "x"}],
                    },
                )
                assert answer.status_code == 200, answer.text
    assert [c.body["max_tokens"] for c in upstream.calls] == [256, 100]


# -- tool calling ----------------------------------------------------------------------
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


async def test_client_tools_come_back_to_the_client_as_tool_calls() -> None:
    def script(body: dict[str, Any]) -> Behavior:
        if len(tool_results(body)) == 0:
            return Behavior(tokens=0, tool_calls=[("weather", '{"city": "Oslo"}')])
        return Behavior(tokens=2)

    upstream = FakeUpstream(script)
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as sdk:
            asked = await sdk.chat.completions.create(
                model="fake-model",
                messages=[{"role": "user", "content": "weather in Oslo?"}],
                tools=[WEATHER],  # type: ignore[list-item]
                tool_choice="auto",
            )
            choice = asked.choices[0]
            assert choice.finish_reason == "tool_calls"
            assert choice.message.content is None
            (call,) = choice.message.tool_calls or []
            assert call.type == "function"
            assert call.function.name == "weather"  # type: ignore[union-attr]
            assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
            sent = upstream.calls[0].body
            assert sent["tools"] == [WEATHER]
            assert sent["tool_choice"] == "auto"

            # The client runs its tool and sends the result back.
            answer = await sdk.chat.completions.create(
                model="fake-model",
                messages=[
                    {"role": "user", "content": "weather in Oslo?"},
                    choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
                ],
                tools=[WEATHER],  # type: ignore[list-item]
            )
            assert answer.choices[0].message.content == "t0 t1 "
            assert answer.choices[0].finish_reason == "stop"
            second = upstream.calls[1].body["messages"]
            assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
            assert second[2]["tool_calls"][0]["id"] == call.id
            assert second[2]["tool_calls"][0]["function"]["name"] == "weather"
            assert second[3] == {"role": "tool", "content": "sunny", "tool_call_id": call.id}

            stream = await sdk.chat.completions.create(
                model="fake-model",
                messages=[{"role": "user", "content": "weather in Oslo?"}],
                tools=[WEATHER],  # type: ignore[list-item]
                stream=True,
            )
            name, arguments, finish = "", "", None
            async for chunk in stream:
                if not chunk.choices:
                    continue
                for delta in chunk.choices[0].delta.tool_calls or ():
                    name += delta.function.name or "" if delta.function else ""
                    arguments += delta.function.arguments or "" if delta.function else ""
                finish = chunk.choices[0].finish_reason or finish
            assert (name, json.loads(arguments), finish) == (
                "weather",
                {"city": "Oslo"},
                "tool_calls",
            )


class Probe(BaseModel):
    n: int


class Pause(BaseModel):
    seconds: float


class Seen:
    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled: list[tuple[float, Any]] = []


def server_tools(seen: Seen) -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool
    async def probe(args: Probe, lifetime: Lifetime) -> dict[str, int]:
        """Square a number."""
        return {"square": args.n * args.n}

    @tools.tool
    async def pause(args: Pause, lifetime: Lifetime) -> str:
        """Wait a while."""
        seen.started.set()
        try:
            await anyio.sleep(args.seconds)
        except anyio.get_cancelled_exc_class():
            seen.cancelled.append((time.monotonic(), lifetime.reason))
            raise
        return "waited"

    return tools


def serve_tools(upstream: FakeUpstream, seen: Seen) -> AbstractAsyncContextManager[Running]:
    return serve(settings_for(upstream, tools=[]), tools=server_tools(seen))


def probe_then_answer(body: dict[str, Any]) -> Behavior:
    if len(tool_results(body)) == 0:
        return Behavior(tokens=1, tool_calls=[("probe", '{"n": 3}')])
    return Behavior(tokens=2)


def events_of(raw: str) -> list[dict[str, Any]]:
    out = []
    for block in raw.split("\n\n"):
        if block.startswith("data: {"):
            out.append(json.loads(block[6:]))
    return out


async def test_server_side_tools_run_in_ragline_and_stream_their_progress() -> None:
    upstream = FakeUpstream(probe_then_answer)
    async with upstream_running(upstream), serve_tools(upstream, Seen()) as running:
        async with httpx.AsyncClient(base_url=running.url) as http:
            body = {
                "model": "fake-model",
                "messages": [{"role": "user", "content": "square 3"}],
                "ragline": {"tools": ["probe"]},
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            response = await http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            chunks = events_of(response.text)
            progress = [
                c["ragline"]["event"] for c in chunks if not c["choices"] and "ragline" in c
            ]
            assert progress == [
                "step",
                "step_done",
                "tool_call",
                "tool_result",
                "step",
                "step_done",
            ]
            result = next(
                c["ragline"] for c in chunks if c.get("ragline", {}).get("event") == "tool_result"
            )
            assert (result["name"], result["status"]) == ("probe", "ok")
            assert json.loads(result["output"]) == {"square": 9}
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
            assert text == "t0 \n\nt0 t1 "  # each step's text its own paragraph
            final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
            assert final[-1]["choices"][0]["finish_reason"] == "stop"
            assert final[-1]["ragline"]["finish_reason"] == "stop"
            usage = chunks[-1]["usage"]
            assert usage["prompt_tokens"] == 22  # 11 per step, summed
            assert usage["completion_tokens"] == sum(len(c.token_times) for c in upstream.calls)
            # The tool is offered to the model, and its result goes back to it.
            assert upstream.calls[0].offered == ["probe"]
            assert upstream.calls[1].tool_results[0]["content"] == '{"square": 9}'

            body["stream"] = False
            whole = (await http.post("/v1/chat/completions", json=body)).json()
            assert whole["choices"][0]["message"]["content"] == "t0 t1 "
            assert whole["ragline"]["finish_reason"] == "stop"
            assert [len(s["results"]) for s in whole["ragline"]["steps"]] == [1, 0]


async def test_a_client_disconnect_during_a_tool_call_cancels_the_tool_and_the_loop() -> None:
    seen = Seen()

    def script(body: dict[str, Any]) -> Behavior:
        return Behavior(tokens=1, tool_calls=[("pause", '{"seconds": 30}')])

    upstream = FakeUpstream(script)
    async with upstream_running(upstream), serve_tools(upstream, seen) as running:
        client = await RawClient.connect(running.port)
        body = {
            "model": "fake-model",
            "messages": [{"role": "user", "content": "wait"}],
            "ragline": {"tools": ["pause"]},
            "stream": True,
        }
        await client.send("POST", "/v1/chat/completions", json.dumps(body).encode())
        await seen.started.wait()
        await client.read_until(b'"tool_call"')
        closed_at = time.monotonic()
        await client.close()
        await eventually(lambda: seen.cancelled, timeout=5)
        ((cancelled_at, reason),) = seen.cancelled
        assert reason.cause == "client_disconnected"
        assert cancelled_at - closed_at < 1.0  # at once; generous for a shared machine
        await eventually(
            lambda: running.metric("ragline_agent_loops_total", finish_reason="cancelled") == 1
        )
        assert len(upstream.calls) == 1  # the loop went no further
        assert running.metric("ragline_tool_calls_total", tool="pause", status="cancelled") == 1
        span = running.span("execute_tool pause")
        assert (span.attributes or {})["ragline.cancel.reason"] == "client_disconnected"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"ragline": {"tools": ["nowhere"]}}, "unknown_tool"),
        (
            {
                "ragline": {"tools": ["probe"]},
                "tools": [{**WEATHER, "function": {"name": "probe"}}],
            },
            "tool_name_clash",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]},
            "invalid_request",
        ),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "invalid_request"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "invalid_request"),
        ({"ragline": {"max_steps": 0}}, "invalid_request"),
    ],
)
async def test_bad_tool_requests_are_422_with_nothing_started(
    change: dict[str, Any], code: str
) -> None:
    upstream = FakeUpstream(probe_then_answer)
    async with upstream_running(upstream), serve_tools(upstream, Seen()) as running:
        async with httpx.AsyncClient(base_url=running.url) as http:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            response = await http.post("/v1/chat/completions", json={**body, **change})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == code
        assert upstream.calls == []


async def test_sampling_parameters_reach_the_upstream_request_over_settings() -> None:
    upstream = FakeUpstream()
    async with (
        upstream_running(upstream),
        serve(settings_for(upstream, llm_top_p=0.5, llm_seed=7, llm_stop="END")) as running,
    ):
        client = AsyncOpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hi"}],
            temperature=0.3,
            top_p=0.8,
            frequency_penalty=0.5,
            presence_penalty=-0.5,
            stop=["\n\n", "Q:"],
            seed=42,
            max_tokens=9,
        )
        await client.close()
        async with httpx.AsyncClient(base_url=running.url) as http:
            native = await http.post("/api/v1/inference/chat", json={"query": "hi"})
        assert native.status_code == 200
    sent, defaults = (call.body for call in upstream.calls)
    assert {k: sent[k] for k in ("temperature", "top_p", "stop", "seed", "max_tokens")} == {
        "temperature": 0.3,
        "top_p": 0.8,
        "stop": ["\n\n", "Q:"],
        "seed": 42,
        "max_tokens": 9,
    }
    assert sent["frequency_penalty"] == 0.5
    assert sent["presence_penalty"] == -0.5
    # Unset in the request: the settings'; unset there too: not sent (the server's own).
    assert {k: defaults.get(k) for k in ("top_p", "seed", "stop", "temperature")} == {
        "top_p": 0.5,
        "seed": 7,
        "stop": ["END"],
        "temperature": None,
    }


@pytest.mark.parametrize(
    "extra",
    [
        {"top_p": 2},
        {"frequency_penalty": 3},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [""]},
        {"seed": -1},
    ],
)
async def test_bad_sampling_parameters_are_rejected_before_the_upstream(
    extra: dict[str, Any],
) -> None:
    upstream = FakeUpstream()
    async with upstream_running(upstream), serve(settings_for(upstream)) as running:
        async with httpx.AsyncClient(base_url=running.url) as http:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            response = await http.post("/v1/chat/completions", json={**body, **extra})
            native = await http.post("/api/v1/inference/chat", json={"query": "hi", **extra})
    assert response.status_code == 422
    assert native.status_code == 422
    assert upstream.calls == []
