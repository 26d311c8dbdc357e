"""The OpenAI Responses API: ``/v1/responses`` create, retrieve (and resume a background
stream with ``?stream=true&starting_after=N``), cancel, delete and ``input_items``.

Whole, streamed, or in the background (:class:`~ragline.dialogue.Dialogue`): a streamed
response belongs to its connection, and a client that leaves stops the model as on every
route (a stored one is kept ``incomplete`` with what was said); a background one is a
ragline run that any replica can read, resume and cancel. ``"ragline": {"tools":
[...]}`` runs ragline's own loop with its server-side tools, as on the chat route.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..agent import OnEvent, check_tools
from ..dialogue import Exchange
from ..errors import InvalidRequest, Overloaded, RagLineError
from ..models import ChatResult
from ..providers import OnDelta
from ..response_input import ResponseRequest
from ..responses import TERMINAL, Draft
from .boundary import RequestContext, caller, request_context
from .errors import error_for_exception
from .routing import OBJECT, ApiRoute, Doc
from .runs_api import LoopOptions, RunEvents, server_tools
from .sse import EventStream, sse
from .validation import parse_json, validate

__all__ = ["routes"]

_LAST_SAVE = 2.0  # seconds a response cut short has to be stored


class ResponseEvents:
    """The typed events of one response, in the :class:`~ragline.server.sse.EventFormat`
    spelling: ``event: <type>`` and the event as data."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.final: dict[str, Any] | None = None  # the object the last event carried

    @staticmethod
    def _write(events: list[dict[str, Any]]) -> bytes:
        return b"".join(sse(e, event=e["type"]) for e in events)

    def opening(self) -> bytes:
        return self._write(self.draft.opening())

    def delta(self, text: str) -> bytes:
        return self._write(self.draft.delta(text))

    def progress(self, event: str, data: dict[str, Any]) -> bytes:
        return b""  # a loop's steps are in the final object's ragline.steps

    def done(self, result: ChatResult) -> bytes:
        return self._close("completed", result)

    def error(self, status: int, body: dict[str, Any], result: ChatResult) -> bytes:
        err = body.get("error", {})
        error = {"code": err.get("code") or "error", "message": err.get("message", "")}
        return self._close("failed", result, error=error, cause=err.get("cause"))

    def _close(
        self,
        status: str,
        result: ChatResult,
        *,
        error: dict[str, Any] | None = None,
        cause: str | None = None,
    ) -> bytes:
        events = self.draft.closing(status, result, error=error, cause=cause)
        self.final = events[-1]["response"]
        return self._write(events)


def _render(n: int, name: str, data: dict[str, Any]) -> bytes:
    """A stored event of a background response (its run's own ``done`` is not one)."""
    return b"" if name == "done" else sse(data, event=name)


async def _exchange(ctx: RequestContext, body: ResponseRequest) -> Exchange:
    runtime = ctx.runtime
    tools = limits = None
    if body.ragline is not None:
        options = validate(LoopOptions, body.ragline)
        tools = server_tools(runtime, options.tools)
        limits = options.limits(runtime.agent.limits)
    exchange = await runtime.dialogue.exchange(
        body, ctx.lifetime, caller(ctx), tools=tools, limits=limits
    )
    if tools is not None:
        check_tools(exchange.chat, tools)
    if runtime.pipeline.retrieval:  # a collection the caller may not read: 404 now
        await runtime.grants.readable(ctx.lifetime, body.collection)
    return exchange


async def create(request: Request) -> Response | EventStream | RunEvents | StoredStream:
    """``POST /v1/responses``: whole, streamed or in the background."""
    ctx = request_context(request.scope)
    runtime = ctx.runtime
    body = validate(ResponseRequest, parse_json(await request.body()))
    exchange = await _exchange(ctx, body)
    dialogue, draft = runtime.dialogue, exchange.draft
    if body.background:
        if not runtime.supervisor.running_now or runtime.lifetime.cancelled:
            raise Overloaded("the server is not running background work (starting or stopping)")
        await dialogue.save(exchange, draft.object("queued"), ctx.lifetime)
        try:
            run = dialogue.background(exchange, ctx.lifetime)
        except RagLineError as exc:  # too many runs, or stopping: nothing is left queued
            refused: RagLineError | None = exc
        else:
            refused = None
        if refused is not None:
            await dialogue.store.delete_response(draft.id, ctx.lifetime)
            raise refused
        await runtime.runs.save(run, ctx.lifetime)  # every replica can read it from now on
        if body.stream:
            return RunEvents(ctx, run.id, 0, render=_render)
        return JSONResponse(draft.object("queued"))
    await dialogue.save(exchange, draft.object("in_progress"), ctx.lifetime)
    if body.stream:
        return StoredStream(ctx, exchange)
    try:
        await exchange.answer(ctx.lifetime, None, exchange.result)
    except anyio.get_cancelled_exc_class():
        await _cut_short(ctx, exchange, None)  # noqa: ASYNC102
        raise
    except RagLineError as exc:
        await _cut_short(ctx, exchange, exc)  # noqa: ASYNC120 (shielded, bounded)
        raise
    final = draft.object("completed", exchange.result)
    await dialogue.save(exchange, final, ctx.lifetime)
    return JSONResponse(final)


async def _cut_short(
    ctx: RequestContext,
    exchange: Exchange,
    exc: RagLineError | None,
    final: dict[str, Any] | None = None,
) -> None:
    """Store what a response said before it was cut short: ``final`` if its stream said
    it, else ``incomplete`` when its request ended (the client left, a shutdown) and
    ``failed`` on an error."""
    if not exchange.draft.request.store:
        return
    reason = ctx.lifetime.reason
    cause = str(reason.cause) if reason is not None else None
    if final is not None:
        pass
    elif exc is None:
        final = exchange.draft.object("incomplete", exchange.result, cause=cause)
    else:
        _, err = error_for_exception(exc)
        error = {"code": exc.code, "message": err["error"]["message"]}
        final = exchange.draft.object("failed", exchange.result, error=error, cause=cause)
    # last_words is a shielded scope with a deadline (flake8-async cannot see it); a
    # store that is down loses the record: the request's own error says more.
    with ctx.lifetime.last_words(_LAST_SAVE) as words, contextlib.suppress(RagLineError):
        await ctx.runtime.dialogue.save(exchange, final, words)  # noqa: ASYNC102


class StoredStream:
    """A streamed response that is stored as it ends, however it ends (an ASGI app)."""

    def __init__(self, ctx: RequestContext, exchange: Exchange) -> None:
        self.ctx = ctx
        self.exchange = exchange
        self.events = ResponseEvents(exchange.draft)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = self.exchange

        async def work(on_delta: OnDelta, on_event: OnEvent) -> None:
            await exchange.answer(self.ctx.lifetime, on_delta, exchange.result)

        stream = EventStream(self.ctx, self.events, work, exchange.result)
        try:
            await stream(scope, receive, send)
        except anyio.get_cancelled_exc_class():
            # A shutdown or deadline wrote its final event (kept as it said); a client
            # that left got none: the response is incomplete.
            await _cut_short(self.ctx, exchange, None, self.events.final)  # noqa: ASYNC102
            raise
        final = self.events.final
        if final is not None:
            await self.ctx.runtime.dialogue.save(exchange, final, self.ctx.lifetime)


async def retrieve(request: Request) -> Response | RunEvents:
    """``GET /v1/responses/{id}``; with ``?stream=true``, a background response's events
    from ``starting_after`` on (any replica)."""
    ctx = request_context(request.scope)
    runtime = ctx.runtime
    response_id = request.path_params["response_id"]
    found = await runtime.dialogue.stored(response_id, caller(ctx), ctx.lifetime)
    body = found.body
    live = body.get("background") and body.get("status") not in TERMINAL
    if request.query_params.get("stream", "false").lower() == "true":
        if not body.get("background"):
            raise InvalidRequest(
                "only background responses can be streamed", param="stream", code="invalid_state"
            )
        raw = request.query_params.get("starting_after", "-1")
        try:
            after = int(raw)
        except ValueError:
            raise InvalidRequest(
                "starting_after must be a number", param="starting_after"
            ) from None
        if await runtime.runs.log.run(response_id, ctx.lifetime) is None:
            raise InvalidRequest(
                "this response's events are no longer kept", param="stream", code="invalid_state"
            )
        return RunEvents(ctx, response_id, max(after + 1, 0), render=_render)
    if live:
        # A run no longer kept anywhere leaves the stored object as all there is.
        with contextlib.suppress(RagLineError):
            body = (await runtime.runs.snapshot(response_id, ctx.lifetime))["response"]
    return JSONResponse(body)


async def cancel(request: Request) -> Response:
    """``POST /v1/responses/{id}/cancel``: a background response only (else 400); the
    final object, the same on every call."""
    ctx = request_context(request.scope)
    dialogue = ctx.runtime.dialogue
    found = await dialogue.stored(request.path_params["response_id"], caller(ctx), ctx.lifetime)
    return JSONResponse(await dialogue.cancel(found, ctx.lifetime))


async def delete(request: Request) -> Response:
    """``DELETE /v1/responses/{id}``: forget it (a background one in flight is cancelled)."""
    ctx = request_context(request.scope)
    runtime = ctx.runtime
    response_id = request.path_params["response_id"]
    found = await runtime.dialogue.stored(response_id, caller(ctx), ctx.lifetime)
    if found.body.get("background") and found.body.get("status") not in TERMINAL:
        await runtime.dialogue.cancel(found, ctx.lifetime)
    await runtime.dialogue.store.delete_response(response_id, ctx.lifetime)
    await runtime.runs.log.forget([response_id], ctx.lifetime)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


async def input_items(request: Request) -> Response:
    """``GET /v1/responses/{id}/input_items``: ``order`` (``desc`` by default),
    ``limit`` (1-100, 20) and ``after`` (an item id), as OpenAI pages them."""
    ctx = request_context(request.scope)
    found = await ctx.runtime.dialogue.stored(
        request.path_params["response_id"], caller(ctx), ctx.lifetime
    )
    params = request.query_params
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", param="order")
    raw = params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("limit must be a number from 1 to 100", param="limit")
    items = list(found.input_items if order == "asc" else reversed(found.input_items))
    after = params.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"no input item {after!r}", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[: int(raw)]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        }
    )


_ERRORS = (400, 401, 404, 413, 422, 429, 502, 503, 504)
routes = [
    ApiRoute(
        "/v1/responses",
        create,
        methods=["POST"],
        doc=Doc(
            "OpenAI-compatible responses: whole, streamed or in the background",
            "openai",
            body=ResponseRequest,
            result=OBJECT,
            events=("response.created", "response.output_text.delta", "response.completed"),
            errors=_ERRORS,
        ),
    ),
    ApiRoute(
        "/v1/responses/{response_id}",
        retrieve,
        methods=["GET"],
        doc=Doc(
            "A stored response, or its events", "openai", result=OBJECT, errors=(400, 401, 404)
        ),
    ),
    ApiRoute(
        "/v1/responses/{response_id}",
        delete,
        methods=["DELETE"],
        doc=Doc("Delete a stored response", "openai", result=OBJECT, errors=(401, 404)),
    ),
    ApiRoute(
        "/v1/responses/{response_id}/cancel",
        cancel,
        methods=["POST"],
        doc=Doc("Cancel a background response", "openai", result=OBJECT, errors=(400, 401, 404)),
    ),
    ApiRoute(
        "/v1/responses/{response_id}/input_items",
        input_items,
        methods=["GET"],
        doc=Doc("A stored response's input items", "openai", result=OBJECT, errors=(400, 401, 404)),
    ),
]
