"""ragline's own API: chat, streaming, retrieval, health and metrics."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..agent import OnEvent
from ..metrics import CONTENT_TYPE
from ..models import ChatRequest, ChatResult, RetrieveRequest, Source
from ..providers import OnDelta
from .boundary import request_context
from .routing import PUBLIC, STR, ApiRoute, Doc, array, obj
from .sse import EventStream, sse
from .validation import parse_json, validate

__all__ = ["routes"]


class NativeEvents:
    """``data: {"delta": ...}`` per chunk, then ``event: done`` or ``event: error``."""

    def opening(self) -> bytes:
        return b""

    def delta(self, text: str) -> bytes:
        return sse({"delta": text})

    def progress(self, event: str, data: dict[str, Any]) -> bytes:
        return sse(data, event=event)

    def done(self, result: ChatResult) -> bytes:
        done: dict[str, Any] = {
            "finish_reason": result.usage.finish_reason,
            "usage": result.usage.model_dump(mode="json"),
            "sources": [s.model_dump(mode="json") for s in result.sources],
        }
        if result.usage.finish_reason == "repetition":
            # The deltas went out before the loop was known: this is the answer to keep.
            done["text"] = result.text
        return sse(done, event="done")

    def error(self, status: int, body: dict[str, Any], result: ChatResult) -> bytes:
        return sse(
            {**body, "status": status, "usage": result.usage.model_dump(mode="json")}, event="error"
        )


async def chat(request: Request) -> Response:
    """``POST /api/v1/inference/chat`` → ``{text, sources, usage}``."""
    ctx = request_context(request.scope)
    chat_request = validate(ChatRequest, parse_json(await request.body()))
    result = await ctx.runtime.pipeline.run(chat_request, ctx.lifetime)
    return JSONResponse(result.model_dump(mode="json"))


async def stream(request: Request) -> EventStream:
    """``GET /api/v1/inference/stream?query=…&top_k=…`` → server-sent events."""
    ctx = request_context(request.scope)
    params: dict[str, Any] = dict(request.query_params)
    chat_request = validate(ChatRequest, params)
    result = ChatResult()

    async def work(on_delta: OnDelta, on_event: OnEvent) -> None:
        await ctx.runtime.pipeline.run(chat_request, ctx.lifetime, on_delta=on_delta, into=result)

    return EventStream(ctx, NativeEvents(), work, result)


async def retrieve(request: Request) -> Response:
    """``POST /api/v1/retrieve`` → ranked hits, without generation."""
    ctx = request_context(request.scope)
    query = validate(RetrieveRequest, parse_json(await request.body()))
    hits = await ctx.runtime.pipeline.retrieve(
        query.query, query.top_k, ctx.lifetime, query.collection
    )
    return JSONResponse(
        {
            "hits": [
                Source.from_hit(hit, rank).model_dump(mode="json")
                for rank, hit in enumerate(hits, start=1)
            ]
        }
    )


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: started and not shutting down."""
    runtime = request_context(request.scope).runtime
    if runtime.ready and not runtime.lifetime.cancelled:
        return JSONResponse({"status": "ready"})
    body = {"status": "not ready"}
    if runtime.unavailable and not runtime.lifetime.cancelled:
        body["reason"] = runtime.unavailable  # an engine that is down, named
    return JSONResponse(body, status_code=503)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    runtime = request_context(request.scope).runtime
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)


routes = [
    ApiRoute(
        "/api/v1/inference/chat",
        chat,
        methods=["POST"],
        doc=Doc(
            "Answer a question (whole)",
            "chat",
            body=ChatRequest,
            result=ChatResult,
            errors=(400, 401, 413, 422, 429, 502, 503, 504),
        ),
    ),
    ApiRoute(
        "/api/v1/inference/stream",
        stream,
        methods=["GET"],
        doc=Doc(
            "Answer a question as server-sent events",
            "chat",
            query=ChatRequest,
            params=("query", "top_k", "collection", "max_tokens", "temperature"),
            media="text/event-stream",
            events=("message: {delta}", "done", "error"),
            errors=(401, 422, 429, 502, 503, 504),
        ),
    ),
    ApiRoute(
        "/api/v1/retrieve",
        retrieve,
        methods=["POST"],
        doc=Doc(
            "Ranked passages, no generation",
            "chat",
            body=RetrieveRequest,
            result=obj(hits=array(Source)),
            errors=(400, 401, 413, 422, 502, 503, 504),
        ),
    ),
    ApiRoute(
        "/healthz",
        healthz,
        methods=["GET"],
        policy=PUBLIC,
        doc=Doc("Liveness", "health", result=obj(status=STR), errors=()),
    ),
    ApiRoute(
        "/readyz",
        readyz,
        methods=["GET"],
        policy=PUBLIC,
        doc=Doc("Readiness", "health", result=obj(status=STR), errors=(503,)),
    ),
    ApiRoute(
        "/metrics",
        metrics,
        methods=["GET"],
        doc=Doc("Prometheus metrics", "health", media="text/plain", errors=(401,)),
    ),
]
