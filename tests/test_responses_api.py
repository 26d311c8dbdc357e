"""The OpenAI Responses API through the official ``openai`` SDK and ``openai-agents``,
unchanged, against real ``ragline serve`` processes and the fake upstream on real
sockets: one replica, and two sharing PostgreSQL."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from conftest import asgi_client, settings_for, upstream_running
from deployment import ADMIN, backend_env, deployment, ingest, make_member
from upstream import Behavior, Call, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio

KEY = "admin-key"


def behave(body: dict[str, Any]) -> Behavior:
    """Slow and long when asked to talk "slowly"; a weather tool call when offered one
    and not answered yet; else four tokens."""
    text = json.dumps(body["messages"])
    if "slowly" in text:
        return Behavior(tokens=3000, interval=0.01)
    offered = [t["function"]["name"] for t in body.get("tools") or ()]
    if "get_weather" in offered and not tool_results(body):
        return Behavior(tokens=0, tool_calls=[("get_weather", '{"city": "Paris"}')])
    if "search" in offered and not tool_results(body):
        return Behavior(tokens=0, tool_calls=[("search", '{"query": "SIGTERM"}')])
    return Behavior(tokens=4)


def sdk(url: str, key: str = KEY) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def answers(upstream: FakeUpstream) -> list[Call]:
    """The upstream calls that generated an answer (not a follow-up's rewrite)."""
    return [c for c in upstream.calls if "Search query:" not in json.dumps(c.body["messages"])]


async def slow_call(upstream: FakeUpstream, tokens: int = 3) -> Call:
    """The upstream call that talks slowly, once it has produced ``tokens``."""
    with anyio.fail_after(30):
        while True:
            found = [c for c in upstream.calls if "slowly" in json.dumps(c.body["messages"])]
            if found and len(found[-1].token_times) >= tokens:
                return found[-1]
            await anyio.sleep(0.01)


async def test_one_replica_whole_streamed_background_cancel_and_a_follow_up(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(behave)
    async with (
        deployment("embedded", tmp_path, backend_env("embedded", request), upstream) as made,
        sdk(made.urls[0]) as client,
    ):
        whole = await client.responses.create(model="gpt-5.6-luna", input="What is ragline?")
        assert (whole.status, whole.output_text) == ("completed", "t0 t1 t2 t3 ")
        assert whole.usage is not None
        assert (whole.usage.input_tokens, whole.usage.output_tokens) == (11, 4)
        assert (await client.responses.retrieve(whole.id)).output_text == "t0 t1 t2 t3 "

        # A follow-up: the upstream's prompt carries the first turn.
        follow = await client.responses.create(
            model="m", input="and then?", previous_response_id=whole.id
        )
        assert follow.status == "completed"
        said = [(m["role"], m["content"]) for m in answers(upstream)[-1].body["messages"]]
        assert ("user", "What is ragline?") in said
        assert ("assistant", "t0 t1 t2 t3 ") in said
        items = await client.responses.input_items.list(follow.id)
        assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]

        # Streamed: typed events numbered from 0 without a gap.
        stream = await client.responses.create(model="m", input="stream it", stream=True)
        events = [event async for event in stream]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[0].type == "response.created"
        assert events[-1].type == "response.completed"
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == "t0 t1 t2 t3 "

        # In the background: polled until completed.
        queued = await client.responses.create(model="m", input="in the back", background=True)
        assert queued.status in ("queued", "in_progress")
        with anyio.fail_after(30):
            polled = queued
            while polled.status in ("queued", "in_progress"):
                await anyio.sleep(0.05)
                polled = await client.responses.retrieve(queued.id)
        assert (polled.status, polled.output_text) == ("completed", "t0 t1 t2 t3 ")

        # Cancel: the upstream stops, the usage so far stays, a second cancel is the same.
        slow = await client.responses.create(model="m", input="talk slowly", background=True)
        call = await slow_call(upstream)
        asked = time.monotonic()
        cancelled = await client.responses.cancel(slow.id)
        with anyio.fail_after(10):
            await call.closed.wait()
        assert call.closed_at is not None
        assert cancelled.status == "cancelled"
        assert cancelled.usage is not None
        assert cancelled.usage.output_tokens >= 3
        again = await client.responses.cancel(slow.id)
        assert again.model_dump() == cancelled.model_dump()
        assert (await client.responses.retrieve(slow.id)).status == "cancelled"
        assert call.tokens_after(asked + 0.5) == 0  # generous on a shared machine

        with pytest.raises(openai.BadRequestError):
            await client.responses.cancel(whole.id)  # not a background response

        await client.responses.delete(whole.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(whole.id)


async def test_a_streamed_client_that_hangs_up_stops_the_upstream_and_is_kept_incomplete(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(behave)
    async with (
        deployment("embedded", tmp_path, backend_env("embedded", request), upstream) as made,
        sdk(made.urls[0]) as client,
    ):
        stream = await client.responses.create(model="m", input="talk slowly", stream=True)
        response_id = ""
        async for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta" and event.sequence_number > 6:
                break
        await stream.close()
        left = time.monotonic()
        (call,) = upstream.calls
        with anyio.fail_after(10):
            await call.closed.wait()
        assert call.tokens_after(left) <= 1
        with anyio.fail_after(10):
            while (kept := await client.responses.retrieve(response_id)).status == "in_progress":
                await anyio.sleep(0.05)
        assert kept.status == "incomplete"
        assert kept.output_text.startswith("t0 t1 t2")
        assert kept.usage is not None
        assert kept.usage.output_tokens >= 3


async def test_the_agents_sdk_runs_a_function_tool_in_its_default_configuration(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = FakeUpstream(behave)
    async with deployment("embedded", tmp_path, backend_env("embedded", request), upstream) as made:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{made.urls[0]}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        # No tracing export: this machine cannot reach OpenAI (the run works either way).
        monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
        from agents import Agent, Runner, function_tool

        asked: list[str] = []

        @function_tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            asked.append(city)
            return f"sunny in {city}"

        agent = Agent(name="helper", instructions="Be brief.", tools=[get_weather])
        result = await Runner.run(agent, "What is the weather in Paris?")
    assert asked == ["Paris"]
    assert result.final_output == "t0 t1 t2 t3 "
    second = upstream.calls[-1].body
    assert [m["content"] for m in tool_results(second)] == ["sunny in Paris"]
    assert os.environ.get("OPENAI_BASE_URL", "").endswith("/v1")


async def read_stream(
    http: httpx.AsyncClient, url: str, key: str, *, after: int | None = None, stop_at: int = -1
) -> list[dict[str, Any]]:
    """A background response's events, read with ``starting_after`` (and, with
    ``stop_at``, left once that event is read)."""
    params: dict[str, Any] = {"stream": "true"}
    if after is not None:
        params["starting_after"] = after
    events: list[dict[str, Any]] = []
    headers = {"authorization": f"Bearer {key}"}
    async with http.stream("GET", url, params=params, headers=headers) as answer:
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["sequence_number"] == stop_at:
                    break
    return events


async def test_two_replicas_resume_cancel_and_continue_each_others_responses(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(behave)
    async with (
        deployment("cluster", tmp_path, backend_env("cluster", request), upstream) as made,
        httpx.AsyncClient(timeout=60) as http,
    ):
        a, b = made.urls
        member = await make_member(http, a, "mia")
        other = await make_member(http, a, "otto")
        mia = member["authorization"].removeprefix("Bearer ")
        otto = other["authorization"].removeprefix("Bearer ")
        await ingest(http, a, ADMIN, [{"id": "d1", "text": "ragline stops work on SIGTERM."}])
        async with sdk(a, mia) as on_a, sdk(b, mia) as on_b, sdk(b, otto) as intruder:
            # Read from A, cut part way, resumed on B: the same events as a full read.
            made_one = await on_a.responses.create(model="m", input="hello", background=True)
            path = f"/v1/responses/{made_one.id}"
            with anyio.fail_after(30):
                while (await on_b.responses.retrieve(made_one.id)).status != "completed":
                    await anyio.sleep(0.05)
            first = await read_stream(http, a + path, mia, stop_at=4)
            rest = await read_stream(http, b + path, mia, after=first[-1]["sequence_number"])
            whole = await read_stream(http, a + path, mia)
            assert first + rest == whole
            assert [e["sequence_number"] for e in whole] == list(range(len(whole)))
            assert whole[-1]["type"] == "response.completed"

            # B cancels a response running on A.
            slow = await on_a.responses.create(model="m", input="talk slowly", background=True)
            call = await slow_call(upstream)
            asked = time.monotonic()
            cancelled = await on_b.responses.cancel(slow.id)
            with anyio.fail_after(10):
                await call.closed.wait()
            assert cancelled.status == "cancelled"
            assert call.tokens_after(asked + 0.5) == 0

            # B continues a conversation begun on A.
            begun = await on_a.responses.create(model="m", input="What is ragline?")
            await on_b.responses.create(model="m", input="and then?", previous_response_id=begun.id)
            said = [(m["role"], m["content"]) for m in answers(upstream)[-1].body["messages"]]
            assert ("user", "What is ragline?") in said

            # Another principal: 404 for every one of these, on either replica.
            for call_it in (
                lambda: intruder.responses.retrieve(made_one.id),
                lambda: intruder.responses.cancel(slow.id),
                lambda: intruder.responses.delete(begun.id),
                lambda: intruder.responses.input_items.list(begun.id),
                lambda: intruder.responses.create(
                    model="m", input="and?", previous_response_id=begun.id
                ),
            ):
                with pytest.raises(openai.NotFoundError):
                    await call_it()
            hidden = await http.get(
                b + path, params={"stream": "true"}, headers={"authorization": f"Bearer {otto}"}
            )
            assert hidden.status_code == 404
            missing = await http.get(b + "/v1/responses/resp_nope", headers=other)
            assert hidden.json() == {
                **missing.json(),
                "error": {**missing.json()["error"], "message": hidden.json()["error"]["message"]},
            }


async def test_shutdown_ends_a_background_response_cancelled_and_it_is_kept(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(behave)
    async with deployment("embedded", tmp_path, backend_env("embedded", request), upstream) as made:
        async with sdk(made.urls[0]) as client:
            slow = await client.responses.create(model="m", input="talk slowly", background=True)
            call = await slow_call(upstream)
        process = made.processes[0]
        process.terminate()  # SIGTERM
        with anyio.fail_after(30):
            await process.wait()
        assert call.closed_at is not None
        again = await made.start()
        async with sdk(again) as client:
            kept = await client.responses.retrieve(slow.id)
    assert kept.status == "cancelled"
    assert kept.model_extra is not None
    assert kept.model_extra["ragline"]["cause"] == "shutdown"
    assert kept.usage is not None
    assert kept.usage.output_tokens >= 3
    assert kept.output_text.startswith("t0 t1 t2")


async def test_a_background_response_past_the_run_timeout_fails_and_responses_expire(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(behave)
    env = {
        "RAGLINE_RUN_TIMEOUT": "1",
        "RAGLINE_RESPONSES_TTL": "2",
        "RAGLINE_RESPONSES_SWEEP": "0.2",
    }
    async with (
        deployment("embedded", tmp_path, backend_env("embedded", request), upstream, **env) as made,
        sdk(made.urls[0]) as client,
    ):
        slow = await client.responses.create(model="m", input="talk slowly", background=True)
        with anyio.fail_after(30):
            while (late := await client.responses.retrieve(slow.id)).status == "in_progress":
                await anyio.sleep(0.1)
        assert late.status == "failed"
        assert late.error is not None
        assert late.error.code == "timeout"
        with anyio.fail_after(30):
            while True:
                try:
                    await client.responses.retrieve(slow.id)
                except openai.NotFoundError:
                    break
                await anyio.sleep(0.2)
        with anyio.fail_after(30):
            while '"responses expired"' not in made.log(0):
                await anyio.sleep(0.2)


async def test_ragline_runs_the_loop_with_its_own_search_tool(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    upstream = FakeUpstream(behave)
    async with (
        deployment("embedded", tmp_path, backend_env("embedded", request), upstream) as made,
        httpx.AsyncClient(timeout=60) as http,
        sdk(made.urls[0]) as client,
    ):
        await ingest(http, made.urls[0], ADMIN, [{"id": "d1", "text": "On SIGTERM ragline stops."}])
        looped = await client.responses.create(
            model="m",
            input="What happens on SIGTERM?",
            extra_body={"ragline": {"tools": ["search"]}},
        )
    assert (looped.status, looped.output_text) == ("completed", "t0 t1 t2 t3 ")
    assert looped.model_extra is not None
    steps = looped.model_extra["ragline"]["steps"]
    assert [c["name"] for s in steps for c in s.get("tool_calls", [])] == ["search"]
    searched = tool_results(upstream.calls[-1].body)
    assert "SIGTERM" in searched[0]["content"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"input": []}, 422),  # nothing to answer
        ({"input": [{"type": "input_image", "image_url": "x"}]}, 422),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, 422),
        ({"input": [{"role": "wizard", "content": "hi"}]}, 422),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, 422),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, 422),
        ({"input": "hi", "tools": [{"type": "function", "name": "no spaces"}]}, 422),
        ({"input": "hi", "background": True, "store": False}, 422),
        ({"input": "hi", "previous_response_id": "resp_nope"}, 404),
        ({"input": "hi", "max_output_tokens": 0}, 422),
        ({"input": [{"role": "user", "content": "hi"}, {"role": "user", "content": 7}]}, 422),
    ],
)
async def test_bad_input_is_a_clear_4xx_and_nothing_is_stored(
    body: dict[str, Any], status: int, tmp_path: Path
) -> None:
    upstream = FakeUpstream(behave)
    async with (
        upstream_running(upstream),
        asgi_client(settings_for(upstream, data_dir=str(tmp_path))) as http,
    ):
        answer = await http.post("/v1/responses", json={"model": "m", **body})
        long = await http.post("/v1/responses", json={"model": "m", "input": "word " * 2000})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["message"]
    assert long.status_code == 200  # a long question is not a long list of items
    assert len(upstream.calls) == 1
