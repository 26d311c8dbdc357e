"""Background agent runs over HTTP: start, read, follow, cancel."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..agent import LoopLimits, check_tools
from ..errors import InvalidRequest, NotFound, Overloaded
from ..lifetime import Cause
from ..models import ChatRequest, CollectionName, Message
from ..notices import Notices
from ..providers.shared import PostgresShared
from ..runs import Run
from ..runtime import Runtime
from ..tools import ToolRegistry
from .boundary import RequestContext, request_context
from .sse import SSE_HEADERS, sse
from .validation import parse_json, validate

__all__ = ["LoopOptions", "routes", "server_tools"]


class LoopOptions(BaseModel):
    """A caller's choice of server-side tools and tighter bounds (never looser than the
    server's own)."""

    model_config = ConfigDict(extra="forbid")

    tools: list[str] | None = None  # None: every server-side tool
    max_steps: int | None = Field(None, ge=1)
    max_tool_calls: int | None = Field(None, ge=1)
    token_budget: int | None = Field(None, ge=1)
    tool_timeout: float | None = Field(None, gt=0)
    deadline: float | None = Field(None, gt=0)

    def limits(self, base: LoopLimits) -> LoopLimits:
        return base.tightened(
            max_steps=self.max_steps,
            max_tool_calls=self.max_tool_calls,
            token_budget=self.token_budget,
            tool_timeout=self.tool_timeout,
            deadline=self.deadline,
        )


def server_tools(runtime: Runtime, names: list[str] | None) -> ToolRegistry:
    """The server-side tools a caller asked for (all of them for ``None``)."""
    registry = runtime.agent.tools
    return registry if names is None else registry.select(names)


class RunRequest(LoopOptions):
    """``POST /api/v1/runs``: a question for an agent loop. ``deadline`` is the run's
    own timeout (at most ``RAGLINE_RUN_TIMEOUT``)."""

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32_000)]
    top_k: int = Field(4, ge=1, le=50)
    collection: CollectionName | None = None
    system_instructions: Annotated[str, StringConstraints(max_length=32_000)] | None = None
    history: list[Message] = Field(default_factory=list, max_length=200)


async def start(request: Request) -> Response:
    """``POST /api/v1/runs`` → 202 ``{run_id}``; the run outlives this request."""
    ctx = request_context(request.scope)
    runtime = ctx.runtime
    body = validate(RunRequest, parse_json(await request.body()))
    tools = server_tools(runtime, body.tools)
    chat = ChatRequest(
        query=body.query,
        top_k=body.top_k,
        collection=body.collection,
        system_instructions=body.system_instructions,
        history=tuple(body.history),
    )
    check_tools(chat, tools)
    if not runtime.supervisor.running_now or runtime.lifetime.cancelled:
        raise Overloaded("the server is not running background work (starting or stopping)")
    run = runtime.runs.start(
        chat, ctx.lifetime, tools=tools, limits=body.limits(runtime.agent.limits)
    )
    await runtime.runs.save(run, ctx.lifetime)  # every replica can read it from now on
    headers = {"location": f"/api/v1/runs/{run.id}"}
    return JSONResponse({"run_id": run.id, "state": run.state}, status_code=202, headers=headers)


async def status(request: Request) -> Response:
    """``GET /api/v1/runs/{run_id}`` → state, steps, usage."""
    ctx = request_context(request.scope)
    return JSONResponse(
        await ctx.runtime.runs.snapshot(request.path_params["run_id"], ctx.lifetime)
    )


async def cancel(request: Request) -> Response:
    """``DELETE /api/v1/runs/{run_id}``: cancel with cause ``explicit`` → 202."""
    ctx = request_context(request.scope)
    run_id = request.path_params["run_id"]
    found = await ctx.runtime.runs.cancel_anywhere(run_id, ctx.lifetime)
    return JSONResponse({"run_id": run_id, "state": found["state"]}, status_code=202)


async def events(request: Request) -> RunEvents | SharedRunEvents:
    """``GET /api/v1/runs/{run_id}/events`` → server-sent events of the run's steps,
    from the start (or after ``Last-Event-ID``), ending with ``done``; on any replica."""
    ctx = request_context(request.scope)
    run_id = request.path_params["run_id"]
    runs = ctx.runtime.runs
    after = request.headers.get("last-event-id")
    first = 0
    if after is not None:
        try:
            first = int(after) + 1
        except ValueError:
            raise InvalidRequest("Last-Event-ID must be an event number") from None
    try:
        return RunEvents(ctx, runs.get(run_id), max(first, 0))
    except NotFound:
        if runs.store is None or ctx.runtime.notices is None:
            raise
    await runs.snapshot(run_id, ctx.lifetime)  # 404 if no replica has it
    return SharedRunEvents(ctx, runs.store, ctx.runtime.notices, run_id, max(first, 0))


class RunEvents:
    """Replays a run's event log, then follows it until the run has finished (an ASGI
    app an endpoint returns). Leaving stops only the reader, never the run."""

    def __init__(self, ctx: RequestContext, run: Run, first: int) -> None:
        self.raw_headers = list(SSE_HEADERS)
        self.ctx = ctx
        self.run = run
        self.first = first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        run = self.run
        sent = self.first

        async def write_new(more: bool) -> None:
            nonlocal sent
            body = b"".join(_event(n, *run.events[n]) for n in range(sent, len(run.events)))
            sent = len(run.events)
            await send({"type": "http.response.body", "body": body, "more_body": more})

        try:
            while True:
                changed = run.changed
                if sent < len(run.events):
                    await write_new(True)
                    continue
                if run.finished:
                    break
                await changed.wait()
        except anyio.get_cancelled_exc_class():
            reason = self.ctx.lifetime.reason
            if reason is not None and reason.cause is not Cause.CLIENT_DISCONNECTED:
                # A shutdown ends the run too: give it a moment to unwind so the reader
                # gets its `done`; a deadline of this request ends the stream cleanly.
                # flake8-async cannot see that last_words is a shielded, bounded scope.
                with self.ctx.lifetime.last_words(self.ctx.runtime.settings.final_event_window):
                    while reason.cause is Cause.SHUTDOWN and not run.finished:
                        changed = run.changed
                        await changed.wait()  # noqa: ASYNC102
                    await write_new(False)  # noqa: ASYNC102
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class SharedRunEvents:
    """A run that another replica runs, read from the shared store: its saved events,
    then each news as that replica saves it, until ``done``."""

    def __init__(
        self,
        ctx: RequestContext,
        store: PostgresShared,
        notices: Notices,
        run_id: str,
        first: int,
    ) -> None:
        self.raw_headers = list(SSE_HEADERS)
        self.ctx, self.store, self.notices = ctx, store, notices
        self.run_id = run_id
        self.first = first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        sent = self.first
        while True:
            news = self.notices.news(self.run_id)  # before reading: no news is missed
            found = await self.store.run_events(self.run_id, sent, self.ctx.lifetime)
            if found:
                body = b"".join(_event(n, name, data) for n, name, data in found)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                sent = found[-1][0] + 1
                if found[-1][1] == "done":
                    break
                continue
            # A notice wakes the reader at once; the timeout covers a lost connection.
            with anyio.move_on_after(_RECHECK):
                await news.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


_RECHECK = 2.0  # seconds a reader of another replica's run waits without news


def _event(n: int, name: str, data: dict[str, Any]) -> bytes:
    return f"id: {n}\n".encode() + sse(data, event=name)


routes = [
    Route("/api/v1/runs", start, methods=["POST"]),
    Route("/api/v1/runs/{run_id}", status, methods=["GET"]),
    Route("/api/v1/runs/{run_id}", cancel, methods=["DELETE"]),
    Route("/api/v1/runs/{run_id}/events", events, methods=["GET"]),
]
