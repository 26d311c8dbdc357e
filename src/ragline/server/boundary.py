"""The HTTP boundary: turns transport events into lifetime cancellations and outcomes
into status codes, logs and metrics.

Starlette notices a disconnect only while a streaming body is being sent, and uvicorn's
``send()`` after a disconnect returns silently. So this middleware reads the body itself,
then keeps listening on ``receive()`` for the whole request: a disconnect at any stage
cancels the request's lifetime with cause ``client_disconnected`` at once.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import anyio
from opentelemetry.trace import SpanKind
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidRequest, RagLineError, StageTimeout
from ..lifetime import CancelReason, Cause
from ..logs import request_id_var
from ..outcomes import Outcome
from ..tracing import mark_cancelled, mark_failed
from .context import Host, RequestContext, caller, request_context
from .errors import (
    CLIENT_CLOSED,
    error_body,
    error_bytes,
    error_for_cause,
    error_for_exception,
    outcome_label,
    status_for_cause,
)
from .routing import ADMIN, DEFAULT_POLICY, ApiRoute, Policy, matched_route

__all__ = ["Boundary", "Policy", "RequestContext", "caller", "record_denial", "request_context"]

log = logging.getLogger("ragline.server")
access_log = logging.getLogger("ragline.access")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


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
        self._counted: dict[tuple[str, str], tuple[Any, Any]] = {}

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
        if route is None and _admin_path(scope, self._routes):
            policy = ADMIN  # a wrong method on an admin route: a 405 would say it is there
        lifetime = ctx.lifetime
        try:
            with lifetime:
                if not await self._admit(scope, send, ctx, policy):
                    return
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

    async def _admit(self, scope: Scope, send: Send, ctx: RequestContext, policy: Policy) -> bool:
        """Find who asks; answer the request (and say False) if they may not."""
        if policy.auth == "own" or (policy.auth == "public" and not policy.admin):
            # Nobody to find: health checks, the page and its assets answer anyone, and
            # must not wait on (or fail with) the principal store.
            return True
        try:
            principal = await self.runtime.principals.identify(
                _header(scope, b"authorization"), ctx.lifetime
            )
        except RagLineError as exc:  # the principal store cannot answer
            await _send_json(send, ctx, *error_for_exception(exc))
            return False
        if principal is None and policy.auth == "api_keys":
            # One body and one path for every bad credential: unknown, revoked, malformed.
            denied = error_body(401, "unauthorized", "missing or invalid API key")
            record_denial(scope, ctx, 401, self._routes)
            await _send_json(send, ctx, 401, denied, {"www-authenticate": "Bearer"})
            return False
        if principal is not None:
            ctx.principal = principal
            ctx.lifetime.bind("principal", principal)
        if policy.admin and (principal is None or not principal.admin):
            # Not there, for anyone but an administrator: the body of an unknown route.
            record_denial(scope, ctx, 404, self._routes)
            await _send_json(send, ctx, 404, error_body(404, "not_found", "Not Found"))
            return False
        return True

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
                # A watcher that saw the disconnect has returned; one still waiting is
                # stopped. Cancelling costs a repr of the current task (anyio names it in
                # the reason): half the CPU of a mass hang-up when paid for every stream.
                if not ctx.disconnected.is_set():
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
        label = outcome_label(status)
        counted = self._counted.get((route, label))
        if counted is None:  # prometheus' labels() costs a lock and checks every time
            counted = self._counted[route, label] = (
                metrics.requests.labels(route, label),
                metrics.request_seconds.labels(route),
            )
        counted[0].inc()
        counted[1].observe(seconds)
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
        if ctx.principal is not None:
            extra["principal"] = ctx.principal.name
        access_log.info("%s %s %d", scope["method"], scope["path"], status, extra=extra)

    def _remember(
        self, ctx: RequestContext, route: str, status: int, seconds: float, cause: str | None
    ) -> None:
        outcome = ctx.outcome
        if outcome is None or not (outcome.generated or cause is not None):
            return  # nothing a caller would ask about (and polls must not crowd it out)
        outcome.owner = ctx.principal.name if ctx.principal is not None else None
        outcome.route, outcome.status = route, status
        outcome.duration_ms = round(seconds * 1000, 1)
        if cause is not None:
            outcome.cause = cause
        self.runtime.outcomes.record(outcome)


def record_denial(
    scope: Scope, ctx: RequestContext, status: int, routes: Sequence[BaseRoute] = ()
) -> None:
    """Count and log a refusal (401, or the 403 or 404 of an object or route the caller
    may not touch) with the principal's name, never their key."""
    path = getattr(matched_route(scope, routes), "path", None)
    route = path if isinstance(path, str) else "<unmatched>"
    ctx.host.metrics.access_denied.labels(route).inc()
    who = ctx.principal.name if ctx.principal is not None else None
    log.warning(
        "access denied",
        extra={"principal": who, "route": route, "status": status, "path": scope["path"]},
    )


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
    return os.urandom(16).hex()  # as random as uuid4's hex, without building a UUID


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


def _admin_path(scope: Scope, routes: Sequence[BaseRoute]) -> bool:
    """Whether the path is an admin-only route's, asked with another method."""
    return any(
        isinstance(r, ApiRoute) and r.policy.admin and r.matches(scope)[0] is Match.PARTIAL
        for r in routes
    )
