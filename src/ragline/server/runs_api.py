"""Background agent runs over HTTP: start, read, follow, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..access import admin_cancel, owned
from ..agent import LoopLimits, check_tools
from ..errors import InvalidRequest, Overloaded
from ..lifetime import Cause, Lifetime
from ..models import ChatRequest, CollectionName, Message
from ..providers.coordination import WorkKey
from ..runs import missing_run
from ..runtime import Runtime
from ..tools import ToolRegistry
from .boundary import RequestContext, caller, request_context
from .routing import OBJECT, STR, ApiRoute, Doc, array, obj
from .sse import SSE_HEADERS, sse
from .validation import parse_json, validate

__all__ = ["LoopOptions", "RunEvents", "routes", "server_tools"]


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
    if runtime.pipeline.retrieval:  # a collection the caller may not read: 404 now
        await runtime.grants.readable(ctx.lifetime, body.collection)
    if not runtime.supervisor.running_now or runtime.lifetime.cancelled:
        raise Overloaded("the server is not running background work (starting or stopping)")
    run = runtime.runs.start(
        chat, ctx.lifetime, tools=tools, limits=body.limits(runtime.agent.limits)
    )
    await runtime.runs.save(run, ctx.lifetime)  # every replica can read it from now on
    headers = {"location": f"/api/v1/runs/{run.id}"}
    return JSONResponse({"run_id": run.id, "state": run.state}, status_code=202, headers=headers)


async def _owned_run(ctx: RequestContext, run_id: str) -> dict[str, Any]:
    """The run's snapshot, if the caller may see it: theirs, or they are an admin
    (anyone else gets the 404 of a run that does not exist)."""
    found = await ctx.runtime.runs.snapshot(run_id, ctx.lifetime)
    owned(caller(ctx), found.get("owner"), missing_run(run_id))
    return found


_LISTED = ("id", "owner", "query", "state", "finish_reason", "cause", "created_at", "finished_at")


async def listing(request: Request) -> Response:
    """``GET /api/v1/runs``: the caller's newest runs (an admin's: everyone's), newest
    first; ``?limit=`` up to 200 (default 50)."""
    ctx = request_context(request.scope)
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 200:
        raise InvalidRequest("limit must be a number from 1 to 200", param="limit")
    principal = caller(ctx)
    owner = None if principal.admin else principal.name
    found = await ctx.runtime.runs.log.runs(ctx.lifetime, owner=owner, limit=int(raw))
    return JSONResponse({"runs": [{k: run.get(k) for k in _LISTED} for run in found]})


async def status(request: Request) -> Response:
    """``GET /api/v1/runs/{run_id}`` → state, steps, usage."""
    ctx = request_context(request.scope)
    return JSONResponse(await _owned_run(ctx, request.path_params["run_id"]))


async def cancel(request: Request) -> Response:
    """``DELETE /api/v1/runs/{run_id}``: cancel with cause ``explicit`` → 202."""
    ctx = request_context(request.scope)
    run_id = request.path_params["run_id"]
    snapshot = await _owned_run(ctx, run_id)
    admin_cancel(caller(ctx), snapshot.get("owner"), "run", run_id)
    found = await ctx.runtime.runs.cancel_anywhere(run_id, ctx.lifetime)
    return JSONResponse({"run_id": run_id, "state": found["state"]}, status_code=202)


async def events(request: Request) -> RunEvents:
    """``GET /api/v1/runs/{run_id}/events`` → server-sent events of the run's steps,
    from the start (or after ``Last-Event-ID``), ending with ``done``; on any replica."""
    ctx = request_context(request.scope)
    run_id = request.path_params["run_id"]
    after = request.headers.get("last-event-id")
    first = 0
    if after is not None:
        try:
            first = int(after) + 1
        except ValueError:
            raise InvalidRequest("Last-Event-ID must be an event number") from None
    await _owned_run(ctx, run_id)  # 404 if no process has it, or it is not the caller's
    return RunEvents(ctx, run_id, max(first, 0))


class RunEvents:
    """Replays a run's saved events, then follows them until ``done`` (an ASGI app an
    endpoint returns), wherever the run runs: each save announces itself by a notice.
    Leaving stops only the reader, never the run."""

    def __init__(
        self,
        ctx: RequestContext,
        run_id: str,
        first: int,
        render: Callable[[int, str, dict[str, Any]], bytes] | None = None,
    ) -> None:
        self.raw_headers = list(SSE_HEADERS)
        self.ctx = ctx
        self.run_id = run_id
        self.sent = first  # events from this number on are still to be written
        self.render = render or _event  # how one event is written

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        lifetime = self.ctx.lifetime
        try:
            await self._follow(send, lifetime, recheck=_RECHECK)
        except anyio.get_cancelled_exc_class():
            reason = lifetime.reason
            if reason is not None and reason.cause is not Cause.CLIENT_DISCONNECTED:
                # A shutdown ends the run too: give it a moment to unwind so the reader
                # gets its `done`; a deadline of this request ends the stream with what
                # is saved. The listener may be gone by now: look often instead.
                # flake8-async cannot see that last_words is a shielded, bounded scope.
                window = self.ctx.runtime.settings.final_event_window
                with lifetime.last_words(window) as words:
                    until_done = reason.cause is Cause.SHUTDOWN
                    await self._follow(send, words, recheck=0.02, until_done=until_done)  # noqa: ASYNC102
                    await send({"type": "http.response.body", "body": b"", "more_body": False})  # noqa: ASYNC102
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(
        self,
        send: Send,
        lifetime: Lifetime,
        *,
        recheck: float,
        until_done: bool = True,
    ) -> None:
        """Write the events from number ``self.sent`` on, until ``done`` (or, without
        ``until_done``, until none is left)."""
        runs, notices = self.ctx.runtime.runs, self.ctx.runtime.notices
        key = WorkKey.run(self.run_id)
        while True:
            news = notices.news(key)  # before reading: no news is missed
            found = await runs.log.run_events(self.run_id, self.sent, lifetime)
            if found:
                body = b"".join(self.render(n, name, data) for n, name, data in found)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                self.sent = found[-1][0] + 1
                if found[-1][1] == "done":
                    return
                continue
            if not until_done:
                return
            # A notice wakes the reader at once; the timeout covers a lost one.
            with anyio.move_on_after(recheck):
                await news.wait()


_RECHECK = 2.0  # seconds a reader waits without news before it reads again


def _event(n: int, name: str, data: dict[str, Any]) -> bytes:
    return f"id: {n}\n".encode() + sse(data, event=name)


routes = [
    ApiRoute(
        "/api/v1/runs",
        start,
        methods=["POST"],
        doc=Doc(
            "Start a background agent run",
            "runs",
            body=RunRequest,
            ok=202,
            result=obj(run_id=STR),
            errors=(400, 401, 413, 422, 503),
        ),
    ),
    ApiRoute(
        "/api/v1/runs",
        listing,
        methods=["GET"],
        doc=Doc(
            "Your newest runs (an admin's: everyone's)",
            "runs",
            result=obj(runs=array(OBJECT)),
            errors=(401, 422),
        ),
    ),
    ApiRoute(
        "/api/v1/runs/{run_id}",
        status,
        methods=["GET"],
        doc=Doc("A run's state, steps and answer", "runs", result=OBJECT, errors=(401, 404)),
    ),
    ApiRoute(
        "/api/v1/runs/{run_id}",
        cancel,
        methods=["DELETE"],
        doc=Doc("Cancel a run", "runs", ok=202, result=OBJECT, errors=(401, 404)),
    ),
    ApiRoute(
        "/api/v1/runs/{run_id}/events",
        events,
        methods=["GET"],
        doc=Doc(
            "A run's events as they come",
            "runs",
            media="text/event-stream",
            events=("step", "tool_call", "tool_result", "step_done", "done"),
            errors=(401, 404, 422),
        ),
    ),
]
