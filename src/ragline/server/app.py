"""``create_app(settings)``: the ASGI application."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import Forbidden, Hidden, RagLineError, UpstreamError
from ..runtime import Runtime
from ..settings import Settings
from . import (
    bot_api,
    chat_api,
    embeddings_api,
    feedback_api,
    ingest_api,
    openai_api,
    openapi,
    principals_api,
    responses_api,
    runs_api,
    web_api,
)
from .boundary import Boundary, record_denial, request_context
from .errors import error_body, error_for_exception

__all__ = ["create_app"]


async def _ragline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RagLineError)
    status, body = error_for_exception(exc)
    if isinstance(exc, Hidden | Forbidden):
        record_denial(request.scope, request_context(request.scope), status)
    headers = {}
    if isinstance(exc, UpstreamError) and exc.retry_after is not None and status in (429, 503):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(exc.status_code, code, str(exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(error_body(500, "internal_error", "internal server error"), status_code=500)


@contextmanager
def _loop_named() -> Iterator[None]:
    """Tell sniffio, for as long as the application runs, that this thread's loop is
    asyncio. anyio asks sniffio on every cancel scope, event, task group and clock read,
    and sniffio otherwise finds asyncio by looking for its current task each time: 5%
    of a whole completion's CPU (bench/flame.py). Its documented per-thread name answers
    at once. Set only over asyncio, and only if unset (trio names itself); unset when the
    application stops, as the same thread may run another loop after (the tests do)."""
    try:
        import sniffio
    except ImportError:  # anyio without sniffio asks the running loop, which is cheap
        yield
        return
    if sniffio.thread_local.name is not None or sniffio.current_async_library() != "asyncio":
        yield
        return
    sniffio.thread_local.name = "asyncio"
    try:
        yield
    finally:
        sniffio.thread_local.name = None


def create_app(settings: Settings | None = None, **overrides: Any) -> Starlette:
    """Build the application from ``settings`` (default: from the environment).

    ``overrides`` replace providers (``generator``, ``embedder``, ``store``,
    ``transformer``, ``composer``) or the ``tracer_provider``, or give the server-side
    ``tools`` (a :class:`~ragline.tools.ToolRegistry`). The runtime is at
    ``app.state.runtime``.
    """
    runtime = Runtime(settings or Settings(), **overrides)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with _loop_named():
            async with runtime.running():
                yield

    all_routes = [
        *chat_api.routes,
        *openai_api.routes,
        *embeddings_api.routes,
        *responses_api.routes,
        *ingest_api.routes,
        *runs_api.routes,
        *principals_api.routes,
        *feedback_api.routes,
        *bot_api.routes,
        *web_api.outcome_routes,
        *(web_api.page_routes() if runtime.settings.web else []),
    ]
    all_routes += openapi.routes(all_routes)
    app = Starlette(
        routes=all_routes,
        middleware=[Middleware(Boundary, runtime=runtime, routes=all_routes)],
        exception_handlers={
            RagLineError: _ragline_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    return app
