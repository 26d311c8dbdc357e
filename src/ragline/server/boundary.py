"""The HTTP boundary: turns transport events into lifetime cancellations and outcomes
into status codes, logs and metrics.

Starlette notices a disconnect only while a streaming body is being sent, and uvicorn's
``send()`` after a disconnect returns silently. So this middleware reads the body itself,
then keeps listening on ``receive()`` for the whole request: a disconnect at any stage
cancels the request's lifetime with cause ``client_disconnected`` at once.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from opentelemetry.trace import SpanKind
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidRequest, StageTimeout
from ..lifetime import CancelReason, Cause, Lifetime
from ..logs import request_id_var
from ..metrics import Metrics
from ..outcomes import Outcome, Outcomes
from ..runtime import Runtime
from ..settings import Settings
from ..tracing import Tracing, mark_cancelled, mark_failed
from .errors import (
    CLIENT_CLOSED,
    error_body,
    error_bytes,
    error_for_cause,
    error_for_exception,
    outcome_label,
    status_for_cause,
)
from .routing import DEFAULT_POLICY, ApiKeys, ApiRoute, Policy, matched_route

__all__ = ["Boundary", "Policy", "RequestContext", "request_context"]

log = logging.getLogger("ragline.server")
access_log = logging.getLogger("ragline.access")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Host(Protocol):
    """What the boundary needs of whoever runs it: ragline's own :class:`Runtime`, or
    :class:`ragline.middleware.Ragline` in someone else's application."""

    settings: Settings
    lifetime: Lifetime
    tracing: Tracing
    metrics: Metrics
    outcomes: Outcomes


@dataclass(eq=False)
class RequestContext:
    """What the boundary knows of one request; endpoints find it in ``scope["ragline"]``."""

    request_id: str
    lifetime: Lifetime
    host: Host
    started: bool = False
    completed: bool = False
    status: int | None = None
    error_status: int | None = None  # an error reported inside a started (streamed) response
    disconnected: anyio.Event = field(default_factory=anyio.Event)
    timed_out: bool = False
    outcome: Outcome | None = None  # what /api/v1/requests/{id} tells of it afterwards
    owner: str | None = None  # a digest of the API key presented, when keys are on
    event_stream: bool = False  # the response is server-sent events

    @property
    def runtime(self) -> Runtime:
        """ragline's runtime, for ragline's own routes."""
        if not isinstance(self.host, Runtime):
            raise TypeError("this route needs ragline's application (create_app)")
        return self.host


def request_context(scope: Scope) -> RequestContext:
    """The boundary's context of a request, from an endpoint's scope."""
    ctx = scope.get("ragline")
    if not isinstance(ctx, RequestContext):
        raise TypeError("endpoint is running outside ragline's boundary")
    return ctx


class Boundary:
    """Pure ASGI middleware in front of the routes. See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        runtime: Host,
        routes: Sequence[BaseRoute] = (),
        *,
        default: Policy | None = None,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self._routes = routes
        self._default = default or DEFAULT_POLICY
        self._keys = ApiKeys(runtime.settings.api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = self.runtime
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        outcome = Outcome(request_id)
        lifetime = rt.lifetime.child(
            "request",
            timeout=rt.settings.request_deadline,
            values={"request_id": request_id, "outcome": outcome},
        )
        ctx = RequestContext(request_id=request_id, lifetime=lifetime, host=rt, outcome=outcome)
        scope["ragline"] = ctx
        begun = time.perf_counter()
        span_name = f"{scope['method']} {scope['path']}"
        try:
            with rt.tracing.span(
                span_name,
                lifetime,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": scope["method"],
                    "url.path": scope["path"],
                    "ragline.request_id": request_id,
                },
            ) as span:
                await self._handle(scope, receive, send, ctx)
                reason = lifetime.reason
                if ctx.timed_out:
                    mark_failed(span, StageTimeout("request", rt.settings.request_deadline))
                elif reason is not None:
                    mark_cancelled(span, reason)
                status = _final_status(ctx, reason)
                span.set_attribute("http.response.status_code", status)
                route = self._route(scope)
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
        finally:
            request_id_var.reset(token)
        self._account(scope, ctx, status, time.perf_counter() - begun)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        route = matched_route(scope, self._routes)
        policy = route.policy if isinstance(route, ApiRoute) else self._default
        allowed, ctx.owner = self._keys.admit(_header(scope, b"authorization"), policy)
        if not allowed:
            denied = error_body(401, "unauthorized", "missing or invalid API key")
            await _send_json(send, ctx, 401, denied, {"www-authenticate": "Bearer"})
            return
        lifetime = ctx.lifetime
        try:
            with lifetime:
                body = await self._read_body(scope, receive, send, ctx, policy)
                if body is not None:
                    await self._run_app(scope, receive, send, ctx, body)
        except StageTimeout:
            ctx.timed_out = True
        reason = lifetime.reason
        if ctx.disconnected.is_set() or ctx.completed:
            return
        if ctx.started:
            if ctx.event_stream and (reason is not None or ctx.timed_out):
                # A stream of an application that is not ragline's own (which writes its
                # own last event) was cut short: end it with a final event, as ours do.
                cause = reason or CancelReason(Cause.DEADLINE, lifetime.path, 0.0)
                status, err = error_for_cause(cause)
                ctx.error_status = status
                final = b"event: error\ndata: " + error_bytes({**err, "status": status}) + b"\n\n"
                with anyio.move_on_after(self.runtime.settings.final_event_window, shield=True):
                    await send({"type": "http.response.body", "body": final, "more_body": False})
                    ctx.completed = True
            return
        if ctx.timed_out:
            status, err = error_for_cause(CancelReason(Cause.DEADLINE, lifetime.path, 0.0))
            await _send_json(send, ctx, status, err)
        elif reason is not None:
            status, err = error_for_cause(reason)
            await _send_json(send, ctx, status, err)

    async def _read_body(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext, policy: Policy
    ) -> bytes | None:
        settings = self.runtime.settings
        limit = settings.max_upload_bytes if policy.upload else settings.max_body_bytes
        too_large = InvalidRequest(f"request body exceeds {limit} bytes", code="body_too_large")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(send, ctx, *error_for_exception(too_large), {"connection": "close"})
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._disconnected(ctx)
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_json(
                    send, ctx, *error_for_exception(too_large), {"connection": "close"}
                )
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run_app(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext, body: bytes
    ) -> None:
        body_given = False

        async def replay() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await ctx.disconnected.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.started = True
                ctx.status = int(message["status"])
                headers = list(message.get("headers", []))
                ctx.event_stream = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in headers
                )
                headers.append((b"x-request-id", ctx.request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ctx.completed = True
            await send(message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, receive, ctx)
            try:
                await self.app(scope, replay, tracked_send)
            except Exception:
                # Starlette has already answered 500; log once, never propagate a traceback.
                log.exception("unhandled error in %s %s", scope["method"], scope["path"])
                if not ctx.started:
                    await _send_json(
                        send, ctx, 500, error_body(500, "internal_error", "internal server error")
                    )
            finally:
                tg.cancel_scope.cancel()

    async def _watch(self, receive: Receive, ctx: RequestContext) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._disconnected(ctx)
                return

    def _disconnected(self, ctx: RequestContext) -> None:
        ctx.disconnected.set()
        if not ctx.completed:
            ctx.lifetime.cancel(Cause.CLIENT_DISCONNECTED, "client closed the connection")

    def _route(self, scope: Scope) -> str:
        """The route template (bounded label values), also for requests never routed."""
        path = getattr(matched_route(scope, self._routes), "path", None)
        return path if isinstance(path, str) else "<unmatched>"

    def _account(self, scope: Scope, ctx: RequestContext, status: int, seconds: float) -> None:
        route = self._route(scope)
        metrics = self.runtime.metrics
        metrics.requests.labels(route, outcome_label(status)).inc()
        metrics.request_seconds.labels(route).observe(seconds)
        reason = ctx.lifetime.reason
        if reason is not None:
            metrics.cancellations.labels(str(reason.cause), "request").inc()
        cause = str(reason.cause) if reason else str(Cause.DEADLINE) if ctx.timed_out else None
        self._remember(ctx, route, status, seconds, cause)
        extra: dict[str, Any] = {
            "request_id": ctx.request_id,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "sent_status": ctx.status,
            "duration_ms": round(seconds * 1000, 1),
        }
        if cause is not None:
            extra["cause"] = cause
        if reason is not None:
            extra["origin"] = reason.origin
        access_log.info("%s %s %d", scope["method"], scope["path"], status, extra=extra)

    def _remember(
        self, ctx: RequestContext, route: str, status: int, seconds: float, cause: str | None
    ) -> None:
        outcome = ctx.outcome
        if outcome is None or not (outcome.generated or cause is not None):
            return  # nothing a caller would ask about (and polls must not crowd it out)
        outcome.owner, outcome.route, outcome.status = ctx.owner, route, status
        outcome.duration_ms = round(seconds * 1000, 1)
        if cause is not None:
            outcome.cause = cause
        self.runtime.outcomes.record(outcome)


def _final_status(ctx: RequestContext, reason: CancelReason | None) -> int:
    if reason is not None and reason.cause is Cause.CLIENT_DISCONNECTED:
        return CLIENT_CLOSED
    if ctx.disconnected.is_set() and not ctx.completed:
        return CLIENT_CLOSED
    if ctx.timed_out:
        return 504
    if reason is not None:
        return status_for_cause(reason)
    if ctx.error_status is not None:
        return ctx.error_status
    return ctx.status if ctx.status is not None else 500


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _request_id(scope: Scope) -> str:
    given = _header(scope, b"x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


async def _send_json(
    send: Send,
    ctx: RequestContext,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    payload = error_bytes(body)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", ctx.request_id.encode()),
    ]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    ctx.started, ctx.status = True, status
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
    ctx.completed = True
