"""The agent loop against the fake upstream over real HTTP, with tools on the application's
supervisor: bounds and their finish reasons, tool errors handed to the model, orphaned
tools, deadlines and spans."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from conftest import LogCapture, Running, eventually, serve, settings_for, upstream_running
from ragline import CancelToken, ChatRequest, Lifetime
from ragline.agent import AgentResult
from ragline.tools import ToolRegistry
from upstream import Behavior, FakeUpstream, tool_results

pytestmark = pytest.mark.anyio


class Probe(BaseModel):
    n: int


class Slow(BaseModel):
    seconds: float


class Record:
    """What the test tools saw."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.cancelled: list[Any] = []
        self.finished: list[str] = []


def registry(record: Record) -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool
    async def probe(args: Probe, lifetime: Lifetime) -> dict[str, int]:
        """Look something up by number."""
        record.calls.append(args.n)
        return {"n": args.n, "square": args.n * args.n}

    @tools.tool
    async def fail(args: Probe, lifetime: Lifetime) -> str:
        """Always fails."""
        raise ValueError(f"no luck with {args.n}")

    @tools.tool
    async def wait(args: Slow, lifetime: Lifetime) -> str:
        """Sleeps, and honours its cancellation."""
        try:
            await anyio.sleep(args.seconds)
        except anyio.get_cancelled_exc_class():
            record.cancelled.append(lifetime.reason)
            raise
        return "slept"

    @tools.tool
    async def stubborn(args: Slow, lifetime: Lifetime) -> str:
        """Ignores its cancellation for ``seconds``."""
        with anyio.CancelScope(shield=True):
            await anyio.sleep(args.seconds)
        record.finished.append("stubborn")
        return "done at last"

    @tools.tool
    def blocking(args: Slow, token: CancelToken) -> str:
        """A blocking tool that never looks at its token."""
        time.sleep(args.seconds)
        record.finished.append("blocking")
        return "done at last"

    return tools


Script = Callable[[dict[str, Any]], Behavior]


@asynccontextmanager
async def running(script: Script, record: Record, **values: Any) -> AsyncIterator[Running]:
    upstream = FakeUpstream(script)
    values.setdefault("tools", [])
    async with upstream_running(upstream):
        async with serve(settings_for(upstream, **values), tools=registry(record)) as app:
            app.upstream = upstream  # type: ignore[attr-defined]
            yield app


async def loop(app: Running, query: str = "q", **limits: Any) -> AgentResult:
    runtime = app.server.runtime
    base = runtime.agent.limits
    chosen = dataclasses.replace(base, **limits)
    result = AgentResult()
    with runtime.lifetime.child("test") as lifetime:
        await runtime.agent.run(ChatRequest(query=query), lifetime, limits=chosen, into=result)
    return result


def steps(upstream: FakeUpstream) -> int:
    return len(upstream.calls)


async def test_a_model_that_calls_tools_forever_stops_at_the_budget() -> None:
    record = Record()

    def forever(body: dict[str, Any]) -> Behavior:
        n = len(tool_results(body))
        return Behavior(tokens=0, prompt_tokens=1000, tool_calls=[("probe", json.dumps({"n": n}))])

    async with running(forever, record) as app:
        result = await loop(app, token_budget=5000, max_steps=100, max_tool_calls=1000)
        upstream: FakeUpstream = app.upstream  # type: ignore[attr-defined]
        assert result.finish_reason == "budget_exhausted"
        reported = [c for c in upstream.calls]
        # Every step's usage, as the upstream reported it, summed.
        fragments = [len(c.token_times) for c in reported]
        assert result.usage.prompt_tokens == 1000 * len(reported)
        assert result.usage.completion_tokens == sum(fragments)
        assert result.usage.total_tokens == 1000 * len(reported) + sum(fragments)
        assert result.usage.total_tokens >= 5000
        assert result.usage.total_tokens - (1000 + fragments[-1]) < 5000
        assert not result.usage.estimated
        # The step that crossed the budget asked for a tool that was not run.
        assert len(reported) == len(result.steps) == 5
        assert record.calls == [0, 1, 2, 3]
        # Each step may spend no more than what is left of the budget.
        for i, call in enumerate(reported):
            assert call.body["max_tokens"] <= 5000 - i * 1000
        # The partial transcript: assistant tool calls and their results.
        roles = [m.role for m in result.transcript]
        assert roles == ["assistant", "tool"] * 4 + ["assistant"]
        assert json.loads(result.transcript[1].content) == {"n": 0, "square": 0}
        assert app.metric("ragline_agent_loops_total", finish_reason="budget_exhausted") == 1


async def test_max_steps_and_max_tool_calls_end_the_loop() -> None:
    record = Record()

    def forever(body: dict[str, Any]) -> Behavior:
        n = len(tool_results(body))
        return Behavior(tokens=1, tool_calls=[("probe", json.dumps({"n": n}))])

    async with running(forever, record) as app:
        result = await loop(app, token_budget=None)
        assert result.finish_reason == "max_steps"
        assert len(result.steps) == 8 == steps(app.upstream)  # type: ignore[attr-defined]
        assert len(record.calls) == 7  # the last step's call had no step left to use it
        assert result.usage.total_tokens == sum(s.usage.total_tokens for s in result.steps)

        record.calls.clear()
        result = await loop(app, token_budget=None, max_tool_calls=3)
        assert result.finish_reason == "max_tool_calls"
        assert len(record.calls) == 3


async def test_repeated_identical_calls_are_stopped() -> None:
    record = Record()

    def same(body: dict[str, Any]) -> Behavior:
        # The same call every time; whitespace and key order do not make it new.
        args = '{"n": 7}' if len(tool_results(body)) % 2 else '{ "n" : 7 }'
        return Behavior(tokens=0, tool_calls=[("probe", args)])

    async with running(same, record) as app:
        result = await loop(app, max_identical_calls=2)
        assert result.finish_reason == "repeated_tool_call"
        assert record.calls == [7, 7]
        assert len(result.steps) == 3


async def test_invalid_arguments_and_tool_errors_reach_the_model_as_tool_results() -> None:
    record = Record()

    def script(body: dict[str, Any]) -> Behavior:
        if len(tool_results(body)) == 0:
            return Behavior(
                tokens=0,
                tool_calls=[
                    ("probe", '{"n": "seven"}'),  # wrong type
                    ("probe", '{"n": '),  # not JSON
                    ("fail", '{"n": 1}'),  # the tool raises
                    ("nowhere", "{}"),  # no such tool
                ],
            )
        return Behavior(tokens=3)

    async with running(script, record) as app:
        result = await loop(app)
        upstream: FakeUpstream = app.upstream  # type: ignore[attr-defined]
        assert result.finish_reason == "stop"
        assert result.text == "t0 t1 t2 "
        assert record.calls == []  # neither invalid call ran
        seen = upstream.calls[1].tool_results
        assert [m["tool_call_id"] for m in seen] == [
            c["id"] for c in upstream.calls[1].body["messages"][-5]["tool_calls"]
        ]
        errors = [json.loads(m["content"])["error"] for m in seen]
        assert [e["type"] for e in errors] == [
            "invalid_arguments",
            "invalid_arguments",
            "error",
            "unknown_tool",
        ]
        assert "n:" in errors[0]["message"]
        assert "integer" in errors[0]["message"]
        assert "not valid JSON" in errors[1]["message"]
        assert errors[2]["message"] == "ValueError: no luck with 1"
        statuses = [o.status for o in result.steps[0].results]
        assert statuses == ["invalid_arguments", "invalid_arguments", "error", "unknown_tool"]
        assert app.metric("ragline_tool_calls_total", tool="probe", status="invalid_arguments") == 2


@pytest.mark.parametrize("tool", ["stubborn", "blocking"])
async def test_a_tool_that_ignores_cancellation_is_orphaned_and_does_not_block(
    tool: str, logs: LogCapture
) -> None:
    record = Record()

    def script(body: dict[str, Any]) -> Behavior:
        if len(tool_results(body)) == 0:
            return Behavior(tokens=0, tool_calls=[(tool, '{"seconds": 4}')])
        return Behavior(tokens=2)

    async with running(script, record, agent_tool_timeout=0.3) as app:
        began = time.monotonic()
        result = await loop(app, tool_cancel_grace=0.2)
        took = time.monotonic() - began
        assert result.finish_reason == "stop"
        assert took < 3.0, took  # the tool still runs for 4 s; the answer did not wait
        assert record.finished == []
        outcome = result.steps[0].results[0]
        assert outcome.status == "orphaned"
        assert json.loads(outcome.output)["error"]["type"] == "timeout"
        warning = await logs.wait_for(lambda r: "orphaned tool" in r.getMessage())
        assert warning.levelno == logging.WARNING
        assert warning.tool == tool
        assert app.metric("ragline_orphaned_tools_total", tool=tool) == 1
        span = app.span(f"execute_tool {tool}")
        assert span.attributes is not None
        assert span.attributes["error.type"] == "timeout"
        assert span.attributes["ragline.tool.orphaned"] is True


async def test_a_tool_timeout_is_a_tool_error_and_the_loop_goes_on() -> None:
    record = Record()

    def script(body: dict[str, Any]) -> Behavior:
        if len(tool_results(body)) == 0:
            return Behavior(tokens=0, tool_calls=[("wait", '{"seconds": 30}')])
        return Behavior(tokens=2)

    async with running(script, record, agent_tool_timeout=0.2) as app:
        result = await loop(app)
        assert result.finish_reason == "stop"
        assert result.steps[0].results[0].status == "timeout"
        assert [r.cause for r in record.cancelled] == ["deadline"]


async def test_the_loop_deadline_ends_it_with_the_transcript_so_far() -> None:
    record = Record()

    def script(body: dict[str, Any]) -> Behavior:
        return Behavior(tokens=1, tool_calls=[("wait", '{"seconds": 30}')])

    async with running(script, record) as app:
        began = time.monotonic()
        result = await loop(app, deadline=0.5, tool_timeout=None)
        assert time.monotonic() - began < 5
        assert result.finish_reason == "deadline"
        assert result.usage.total_tokens > 0
        assert [m.role for m in result.transcript] == ["assistant"]
        assert result.steps[0].results[0].status == "cancelled"
        # The loop does not wait for its tools to unwind; the tool hears of it at once.
        await eventually(lambda: record.cancelled, timeout=2)
        (reason,) = record.cancelled
        assert reason.cause == "deadline"
        assert reason.origin.endswith("/agent")


async def test_spans_show_every_step_and_tool_call() -> None:
    record = Record()

    def script(body: dict[str, Any]) -> Behavior:
        n = len(tool_results(body))
        if n < 2:
            return Behavior(tokens=0, tool_calls=[("probe", json.dumps({"n": n}))])
        return Behavior(tokens=2)

    async with running(script, record) as app:
        result = await loop(app)
        assert result.finish_reason == "stop"
        spans = app.finished_spans()
        agent = app.span("invoke_agent ragline")
        step_spans = [s for s in spans if s.name == "ragline.agent.step"]
        tools = [s for s in spans if s.name == "execute_tool probe"]
        chats = [s for s in spans if s.name == "chat fake-model"]
        assert len(step_spans) == 3
        assert len(tools) == 2
        assert len(chats) == 3
        assert agent.attributes is not None
        assert agent.attributes["ragline.agent.finish_reason"] == "stop"
        assert agent.attributes["ragline.agent.steps"] == 3
        assert agent.attributes["gen_ai.usage.input_tokens"] == 33
        assert agent.context is not None
        for span in step_spans:
            assert span.parent is not None
            assert span.parent.span_id == agent.context.span_id
        step_ids = {s.context.span_id for s in step_spans if s.context is not None}
        for span in [*tools, *chats]:
            assert span.parent is not None
            assert span.parent.span_id in step_ids
        assert [s.attributes["ragline.agent.step"] for s in step_spans] == [1, 2, 3]  # type: ignore[index]
        for span in tools:
            attributes = span.attributes or {}
            assert attributes["gen_ai.operation.name"] == "execute_tool"
            assert attributes["gen_ai.tool.name"] == "probe"
            assert attributes["gen_ai.tool.type"] == "function"
            assert str(attributes["gen_ai.tool.call.id"]).startswith("call_")
            assert attributes["ragline.tool.status"] == "ok"
