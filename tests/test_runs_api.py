"""Background runs over HTTP on a real uvicorn, in front of the fake upstream: a run
outlives the request that started it, its events replay and follow, DELETE and shutdown
cancel it with their causes, its own deadline ends it normally, and bad input starts
nothing."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel

from conftest import (
    LogCapture,
    RawClient,
    Running,
    eventually,
    serve,
    settings_for,
    upstream_running,
)
from ragline import Lifetime
from ragline.lifetime import CancelReason
from ragline.runs import Run
from ragline.tools import ToolRegistry
from upstream import Behavior, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio

PROMPT_TOKENS = 13
GATE_ARGS = '{"label": "one"}'  # 16 characters: a head and 3 fragments of 7
GATE_OUTPUT = '{"label": "one", "opened": true}'


class Gate(BaseModel):
    label: str


class Slow(BaseModel):
    seconds: float


class Record:
    """What the test tools saw; ``release`` opens the gate."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.reasons: list[CancelReason | None] = []
        self.cancelled_on_return: list[bool] = []


def registry(record: Record) -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool
    async def gate(args: Gate, lifetime: Lifetime) -> dict[str, Any]:
        """Waits until the test opens the gate; honours its cancellation."""
        record.entered.set()
        try:
            await record.release.wait()
        except anyio.get_cancelled_exc_class():
            record.reasons.append(lifetime.reason)
            raise
        record.cancelled_on_return.append(lifetime.cancelled)
        return {"label": args.label, "opened": True}

    @tools.tool
    async def wait(args: Slow, lifetime: Lifetime) -> str:
        """Sleeps; honours its cancellation."""
        record.entered.set()
        try:
            await anyio.sleep(args.seconds)
        except anyio.get_cancelled_exc_class():
            record.reasons.append(lifetime.reason)
            raise
        return "slept"

    return tools


def gate_then_answer(body: dict[str, Any]) -> Behavior:
    """Step 1: one text token and a call of ``gate``; step 2: a three-token answer."""
    if len(tool_results(body)) == 0:
        return Behavior(tokens=1, prompt_tokens=PROMPT_TOKENS, tool_calls=[("gate", GATE_ARGS)])
    return Behavior(tokens=3, prompt_tokens=PROMPT_TOKENS)


@asynccontextmanager
async def app_with(
    script: Callable[[dict[str, Any]], Behavior], record: Record, **values: Any
) -> AsyncIterator[tuple[Running, FakeUpstream]]:
    upstream = FakeUpstream(script)
    async with (
        upstream_running(upstream),
        serve(settings_for(upstream, tools=[], **values), tools=registry(record)) as running,
    ):
        yield running, upstream


@asynccontextmanager
async def client(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        yield http


async def start(http: httpx.AsyncClient, **body: Any) -> str:
    answer = await http.post("/api/v1/runs", json={"query": "q", **body})
    assert answer.status_code == 202, answer.text
    assert answer.json()["state"] == "running"
    run_id: str = answer.json()["run_id"]
    assert answer.headers["location"] == f"/api/v1/runs/{run_id}"
    return run_id


async def finished(http: httpx.AsyncClient, run_id: str, timeout: float = 10) -> dict[str, Any]:
    """Poll the run until it has ended (runs have no event to wait on over HTTP but the
    stream, tested separately)."""
    with anyio.fail_after(timeout):
        while True:
            snapshot: dict[str, Any] = (await http.get(f"/api/v1/runs/{run_id}")).json()
            if snapshot["state"] != "running":
                return snapshot
            await anyio.sleep(0.02)


@dataclass
class Event:
    id: int
    name: str
    data: dict[str, Any]


async def sse(response: httpx.Response) -> AsyncGenerator[Event, None]:
    """The events of a run's stream as they arrive."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            key, _, value = line.partition(": ")
            fields[key] = value
            continue
        if fields:
            yield Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))
            fields = {}


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


def runtime_run(running: Running, run_id: str) -> Run:
    return running.server.runtime.runs.get(run_id)


# ``step_done`` closes the model call of a step (its finish reason is the model's), so
# it comes before the tool calls that the step asked for.
EXPECTED = ["step", "step_done", "tool_call", "tool_result", "step", "step_done", "done"]


async def test_a_run_outlives_the_request_that_started_it() -> None:
    record = Record()
    async with app_with(gate_then_answer, record) as (running, upstream):
        runtime = running.server.runtime
        raw = await RawClient.connect(running.port)
        body = json.dumps({"query": "q", "tools": ["gate"]}).encode()
        await raw.send("POST", "/api/v1/runs", body, headers={"x-request-id": "starter"})
        with anyio.fail_after(5):
            reply = await raw.read_until(b"}")
        await raw.close()  # hang up right after the 202
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), head
        run_id = json.loads(payload)["run_id"]

        # The run is in its tool; the server has seen the connection go.
        with anyio.fail_after(5):
            await record.entered.wait()
        await eventually(lambda: not running.server.server_state.connections, timeout=5)
        run = runtime.runs.get(run_id)
        assert run.state == "running"
        assert not run.lifetime.cancelled
        assert record.reasons == []
        # Detached: it keeps the request's values, and obeys only the application above.
        assert run.lifetime.detached
        assert run.lifetime.get("request_id") == "starter"
        assert run.lifetime.get("run_id") == run_id

        record.release.set()
        async with client(running) as http:
            snapshot = await finished(http, run_id)

    assert snapshot["state"] == "completed", snapshot
    assert snapshot["finish_reason"] == "stop"
    assert snapshot["cause"] is None
    assert snapshot["error"] is None
    assert snapshot["text"] == "t0 t1 t2 "
    assert snapshot["tool_calls"] == []  # no client tools were handed back
    assert snapshot["created_at"] <= snapshot["finished_at"]
    assert record.cancelled_on_return == [False]  # nothing cancelled the tool
    steps = snapshot["steps"]
    assert [s["index"] for s in steps] == [1, 2]
    (outcome,) = steps[0]["results"]
    assert outcome["name"] == "gate"
    assert outcome["status"] == "ok"
    assert outcome["output"] == GATE_OUTPUT
    assert steps[1]["results"] == []
    # The model read the tool's result in its second call.
    assert len(upstream.calls) == 2
    assert [m["content"] for m in upstream.calls[1].tool_results] == [GATE_OUTPUT]
    # Usage is what the upstream reported, summed: completion tokens are the text tokens
    # and the tool call's fragments (1 + head + 3 pieces, then 3).
    reported = [len(c.token_times) for c in upstream.calls]
    assert reported == [5, 3]
    assert [s["usage"]["completion_tokens"] for s in steps] == reported
    usage = snapshot["usage"]
    assert usage["prompt_tokens"] == PROMPT_TOKENS * 2
    assert usage["completion_tokens"] == sum(reported)
    assert usage["total_tokens"] == PROMPT_TOKENS * 2 + sum(reported)
    assert usage["estimated"] is False


async def test_events_replay_and_follow_and_a_reader_leaving_does_not_stop_the_run(
    logs: LogCapture,
) -> None:
    record = Record()
    async with app_with(gate_then_answer, record) as (running, _), client(running) as http:
        run_id = await start(http, tools=["gate"])
        with anyio.fail_after(5):
            await record.entered.wait()
        url = f"/api/v1/runs/{run_id}/events"

        # A reader that leaves while the run is in its tool.
        async with http.stream("GET", url, headers={"x-request-id": "reader-a"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = sse(response)
            with anyio.fail_after(5):
                first = [await anext(stream) for _ in range(3)]
            await stream.aclose()
        assert names(first) == EXPECTED[:3]
        with anyio.fail_after(5):
            left = await logs.wait_for(logs.access("reader-a"))
        assert left.status == 499  # type: ignore[attr-defined]
        assert left.cause == "client_disconnected"  # type: ignore[attr-defined]
        assert runtime_run(running, run_id).state == "running"
        assert not runtime_run(running, run_id).lifetime.cancelled

        # A reader that follows the run to its end.
        got: list[Event] = []
        async with http.stream("GET", url) as response:
            stream = sse(response)
            with anyio.fail_after(5):
                got += [await anext(stream) for _ in range(3)]
                record.release.set()
                got += [event async for event in stream]  # the stream ends after done

        assert names(got) == EXPECTED
        assert [e.id for e in got] == list(range(len(EXPECTED)))
        step1, done1, call, result, step2, done2, done = (e.data for e in got)
        assert step1 == {"step": 1}
        assert call["step"] == 1
        assert call["name"] == "gate"
        assert call["arguments"] == GATE_ARGS
        assert result["id"] == call["id"]
        assert result["status"] == "ok"
        assert result["output"] == GATE_OUTPUT
        assert done1["step"] == 1
        assert done1["finish_reason"] == "tool_calls"
        assert done1["usage"]["completion_tokens"] == 5
        assert step2 == {"step": 2}
        assert done2["finish_reason"] == "stop"
        assert done["id"] == run_id
        assert done["state"] == "completed"
        assert done["finish_reason"] == "stop"
        assert done["cause"] is None
        assert done["usage"]["total_tokens"] == 2 * PROMPT_TOKENS + 8

        # A reader coming back after event 2 gets only what followed, then the end.
        with anyio.fail_after(5):
            async with http.stream("GET", url, headers={"last-event-id": "2"}) as response:
                later = [event async for event in sse(response)]
        assert later == got[3:]
        bad = await http.get(url, headers={"last-event-id": "two"})
        assert bad.status_code == 422
        snapshot = await finished(http, run_id)
    assert snapshot["state"] == "completed"


async def test_delete_cancels_a_run_in_its_tool_call() -> None:
    record = Record()
    async with app_with(gate_then_answer, record) as (running, upstream), client(running) as http:
        run_id = await start(http, tools=["gate"])
        with anyio.fail_after(5):
            await record.entered.wait()
        cancelled = await http.delete(f"/api/v1/runs/{run_id}")
        assert cancelled.status_code == 202
        assert cancelled.json()["run_id"] == run_id
        snapshot = await finished(http, run_id)
        await eventually(lambda: record.reasons, timeout=5)
        with anyio.fail_after(5):
            async with http.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
                events = [event async for event in sse(response)]
        again = await http.delete(f"/api/v1/runs/{run_id}")  # a finished run: no change
        unknown_delete = await http.delete("/api/v1/runs/run_nope")
        unknown_get = await http.get("/api/v1/runs/run_nope")
        unknown_events = await http.get("/api/v1/runs/run_nope/events")
        after = await http.get(f"/api/v1/runs/{run_id}")

    assert snapshot["state"] == "cancelled", snapshot
    assert snapshot["cause"] == "explicit"
    assert snapshot["finish_reason"] == "cancelled"
    assert snapshot["finished_at"] is not None
    ((outcome,),) = [s["results"] for s in snapshot["steps"]]
    assert outcome["status"] == "cancelled"
    assert snapshot["usage"]["prompt_tokens"] == PROMPT_TOKENS  # the one step's usage
    (reason,) = record.reasons
    assert reason is not None
    assert reason.cause == "explicit"
    assert record.cancelled_on_return == []
    assert len(upstream.calls) == 1  # the loop ended: no step read the tool's result
    assert names(events) == ["step", "step_done", "tool_call", "done"]
    assert events[-1].data["state"] == "cancelled"
    assert events[-1].data["cause"] == "explicit"
    assert again.status_code == 202
    assert again.json()["state"] == "cancelled"
    assert after.json()["cause"] == "explicit"
    for answer in (unknown_delete, unknown_get, unknown_events):
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["error"]["code"] == "run_not_found"
        assert answer.json()["error"]["type"] == "not_found_error"


def slow_answer(body: dict[str, Any]) -> Behavior:
    return Behavior(tokens=10_000, interval=0.02, prompt_tokens=PROMPT_TOKENS)


@pytest.mark.parametrize("where", ["tool", "upstream"])
async def test_shutdown_cancels_a_run_in_flight_and_the_server_exits_promptly(where: str) -> None:
    record = Record()
    script = gate_then_answer if where == "tool" else slow_answer
    async with app_with(script, record) as (running, upstream):
        async with client(running) as http:
            run_id = await start(http, tools=["gate"])
            with anyio.fail_after(5):
                if where == "tool":
                    await record.entered.wait()
                else:
                    (call,) = await upstream.wait_for_calls(1)
            if where == "upstream":
                await eventually(lambda: len(call.token_times) >= 5, timeout=5)
        began = time.monotonic()
        running.server.stop()
        # Leaving ``serve`` waits for uvicorn, the lifespan and the supervisor to end.
    took = time.monotonic() - began
    assert took < 5, took

    run = running.server.runtime.runs.get(run_id)
    assert run.state == "cancelled"
    snapshot = run.snapshot()
    assert snapshot["cause"] == "shutdown"
    assert snapshot["finish_reason"] == "cancelled"
    assert snapshot["error"] is None
    assert snapshot["finished_at"] is not None
    (name, done) = run.events[-1]
    assert name == "done"
    assert done["state"] == "cancelled"
    assert done["cause"] == "shutdown"
    assert len(upstream.calls) == 1
    if where == "tool":
        (reason,) = record.reasons
        assert reason is not None
        assert reason.cause == "shutdown"
        assert [e for e, _ in run.events] == ["step", "step_done", "tool_call", "done"]
        ((outcome,),) = [s["results"] for s in snapshot["steps"]]
        assert outcome["status"] == "cancelled"
    else:
        assert record.reasons == []
        assert [e for e, _ in run.events] == ["step", "done"]
        (call,) = upstream.calls
        with anyio.fail_after(5):
            await call.closed.wait()  # ragline hung up on the model
        assert not call.finished
        # The partial answer is kept: a prefix of what the model produced.
        received = snapshot["text"].count(" ")
        assert 1 <= received <= len(call.token_times)
        assert snapshot["text"] == "".join(f"t{i} " for i in range(received))


async def test_an_events_reader_at_shutdown_gets_done() -> None:
    record = Record()
    followed: list[Event] = []
    errors: list[Exception] = []
    async with app_with(gate_then_answer, record) as (running, _):
        async with client(running) as http:
            run_id = await start(http, tools=["gate"])
            reading = anyio.Event()

            async def follow() -> None:
                try:
                    async with http.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
                        async for event in sse(response):
                            followed.append(event)
                            reading.set()
                except httpx.HTTPError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                with anyio.fail_after(5):
                    await record.entered.wait()
                    await reading.wait()
                running.server.stop()
    assert running.server.runtime.runs.get(run_id).state == "cancelled"
    assert errors == []
    assert names(followed) == ["step", "step_done", "tool_call", "done"]
    assert followed[-1].data["cause"] == "shutdown"


async def test_a_runs_own_deadline_ends_it_normally_with_what_it_has() -> None:
    record = Record()

    def script(body: dict[str, Any]) -> Behavior:
        return Behavior(
            tokens=1, prompt_tokens=PROMPT_TOKENS, tool_calls=[("wait", '{"seconds": 30}')]
        )

    async with app_with(script, record) as (running, upstream), client(running) as http:
        began = time.monotonic()
        run_id = await start(http, tools=["wait"], deadline=0.5)
        snapshot = await finished(http, run_id)
        took = time.monotonic() - began
        await eventually(lambda: record.reasons, timeout=5)

    assert took < 5, took
    assert snapshot["state"] == "completed", snapshot
    assert snapshot["finish_reason"] == "deadline"
    assert snapshot["cause"] is None
    assert snapshot["error"] is None
    assert snapshot["text"] == "t0 "
    ((outcome,),) = [s["results"] for s in snapshot["steps"]]
    assert outcome["name"] == "wait"
    assert outcome["status"] == "cancelled"
    assert snapshot["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert snapshot["usage"]["completion_tokens"] == len(upstream.calls[0].token_times)
    assert len(upstream.calls) == 1
    (reason,) = record.reasons
    assert reason is not None
    assert reason.cause == "deadline"


async def test_too_many_runs_is_a_503_and_only_the_last_finished_runs_are_kept() -> None:
    record = Record()
    async with (
        app_with(gate_then_answer, record, runs_max_active=1, runs_kept=1) as (running, _),
        client(running) as http,
    ):
        runs = running.server.runtime.runs
        first = await start(http, tools=["gate"])
        with anyio.fail_after(5):
            await record.entered.wait()
        refused = await http.post("/api/v1/runs", json={"query": "q", "tools": ["gate"]})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert list(runs._runs) == [first]
        record.release.set()
        assert (await finished(http, first))["state"] == "completed"
        # The slot is free again once the run has ended.
        second = await start(http, tools=["gate"])
        assert (await finished(http, second))["state"] == "completed"
        forgotten = await http.get(f"/api/v1/runs/{first}")
    assert forgotten.status_code == 404
    assert list(runs._runs) == [second]


BAD_INPUT: list[tuple[Any, int, str, str | None]] = [
    ({"query": ""}, 422, "invalid_request", "query"),
    ({"query": "   "}, 422, "invalid_request", "query"),
    ({"top_k": 3}, 422, "invalid_request", "query"),
    ({"query": "q", "tools": ["nope"]}, 422, "unknown_tool", "tools"),
    ({"query": "q", "bogus": 1}, 422, "invalid_request", "bogus"),
    ({"query": "q", "deadline": 0}, 422, "invalid_request", "deadline"),
    ({"query": "q", "max_steps": 0}, 422, "invalid_request", "max_steps"),
    ([], 422, "invalid_request", None),
    (b"{not json", 400, "malformed_json", None),
]


async def test_bad_input_is_refused_and_starts_nothing(logs: LogCapture) -> None:
    record = Record()
    async with app_with(gate_then_answer, record) as (running, upstream), client(running) as http:
        runtime = running.server.runtime
        standing = runtime.supervisor.active  # the application's own (its notice listener)
        for body, status, code, param in BAD_INPUT:
            if isinstance(body, bytes):
                answer = await http.post(
                    "/api/v1/runs", content=body, headers={"content-type": "application/json"}
                )
            else:
                answer = await http.post("/api/v1/runs", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert answer.headers["content-type"].startswith("application/json"), body
            error = answer.json()["error"]
            assert (error["code"], error["param"]) == (code, param), (body, error)
        assert not runtime.runs._runs  # no run was created
        assert runtime.supervisor is not None
        assert runtime.supervisor.active == standing
        assert not [r for r in logs.records if r.getMessage() == "run started"]
        assert upstream.calls == []
        # The same server starts a good run, so the checks above could have seen one.
        run_id = await start(http, tools=[])
        assert list(runtime.runs._runs) == [run_id]
        assert [r for r in logs.records if r.getMessage() == "run started"]
