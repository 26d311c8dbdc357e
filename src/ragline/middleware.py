"""ragline's request lifetimes in any Starlette or FastAPI application.

One line gives an existing app what ragline's own routes have::

    app.add_middleware(RaglineMiddleware)

- A client that hangs up cancels its handler at once, wherever it is: before the first
  byte, inside a non-streaming call, or mid-stream. The cause is ``client_disconnected``,
  and an ``httpx`` or ``openai`` call the handler was awaiting closes its connection, which
  is what tells a model server to stop generating.
- SIGTERM (under uvicorn, or :func:`serve`) cancels every handler in flight with cause
  ``shutdown``: a response not yet started gets a 503, a stream of server-sent events a
  final ``event: error``, and the process exits without waiting for streams to end.
- The access log line (logger ``ragline.access``) says 499 for a client that left, and
  the span (the app's OpenTelemetry tracer provider) carries the cause.
- :func:`request_lifetime` hands a handler its request's :class:`~ragline.Lifetime`, as a
  FastAPI dependency (``Depends(request_lifetime)``) or called with a Starlette request:
  child stages, deadlines that are timeouts rather than cancellations, detached work.

Add it last, so that it is the outermost middleware: it must see the client's own
``http.disconnect``, which ``BaseHTTPMiddleware`` below it would otherwise hide.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

from opentelemetry import trace
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .backend import keys_only
from .lifetime import Cause, Lifetime
from .metrics import Metrics
from .outcomes import Outcomes
from .principals import Principals
from .server.boundary import Boundary, Policy, request_context
from .settings import Settings
from .tracing import Tracing

__all__ = ["Ragline", "RaglineMiddleware", "request_lifetime", "serve"]

log = logging.getLogger("ragline.middleware")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Ragline:
    """The lifetimes, metrics and outcome memory behind :class:`RaglineMiddleware`.

    ``settings`` default to the environment's (``RAGLINE_*``); the ones that apply are the
    request deadline, the body limit, the final event window and ``RAGLINE_API_KEYS``
    (empty by default: the app's own authentication is left alone).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.lifetime = Lifetime.root("app")
        # The app's own tracer provider, configured or not: its spans, its exporter.
        self.tracing = Tracing(trace.get_tracer_provider())
        self.metrics = Metrics()
        self.outcomes = Outcomes(self.settings.outcomes_kept)
        # The keys of RAGLINE_API_KEYS only (no principal store of its own).
        self.principals = Principals(self.settings.api_keys, keys_only())

    def shutdown(self, detail: str = "") -> None:
        """Cancel every request in flight with cause ``shutdown``. Loop thread only."""
        if self.lifetime.reason is None:
            log.info("shutting down: cancelling in-flight requests", extra={"cause": "shutdown"})
        self.lifetime.cancel(Cause.SHUTDOWN, detail)


class RaglineMiddleware:
    """Pure ASGI middleware: every HTTP request runs under its own lifetime.

    ``app.add_middleware(RaglineMiddleware)``, or pass a :class:`Ragline` to share one
    (``app.add_middleware(RaglineMiddleware, ragline=shared)``). Under uvicorn it chains
    itself to the server's SIGTERM and SIGINT handlers at startup, so that the signal
    cancels in-flight work before uvicorn starts waiting for it.
    """

    def __init__(self, app: ASGIApp, ragline: Ragline | None = None) -> None:
        self.ragline = ragline or Ragline()
        self.app = app
        # No routes known: every request gets one policy, the API keys if set, and the
        # upload limit (RAGLINE_MAX_UPLOAD_BYTES) for every body: the app's own routes
        # may take files.
        self._boundary = Boundary(app, self.ragline, default=Policy(upload=True))
        self._installed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan(receive), send)
            return
        await self._boundary(scope, receive, send)

    def _lifespan(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not self._installed:
                self._installed = True
                self._chain_signals(asyncio.get_running_loop())
            return message

        return watched

    def _chain_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run ours, then whatever handler is there (uvicorn's)."""
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)

            def handler(number: int, frame: FrameType | None, previous: Any = previous) -> None:
                if not loop.is_closed():
                    # A signal handler runs between bytecodes: hand the cancel to the loop.
                    loop.call_soon_threadsafe(self.ragline.shutdown, f"signal {number}")
                if callable(previous):
                    previous(number, frame)

            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread: the app is someone else's to stop
                return


def request_lifetime(request: Request) -> Lifetime:
    """The lifetime of ``request``: a FastAPI dependency, or call it in a Starlette handler.

    It is cancelled when the client leaves or the server shuts down; make a stage of it
    with ``lifetime.child("upstream", timeout=30)`` (running past the timeout raises
    :class:`~ragline.StageTimeout`, never a cancellation).
    """
    return request_context(request.scope).lifetime


def serve(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 8000, **config: Any) -> None:
    """Run ``app`` on uvicorn, as ``uvicorn.run`` would, with ragline's choices: bound to
    127.0.0.1 unless told, and the access log written by the middleware (499s, causes)."""
    import uvicorn

    config.setdefault("access_log", False)
    uvicorn.run(app, host=host, port=port, **config)
