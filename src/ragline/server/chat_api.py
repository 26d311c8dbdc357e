"""ragline's own API: chat, streaming, retrieval, health and metrics."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..agent import OnEvent
from ..guards import GUARD_STOPS
from ..metrics import CONTENT_TYPE
from ..models import ChatRequest, ChatResult, RetrieveRequest, Source
from ..providers import OnDelta
from .boundary import RequestContext, caller, request_context
from .routing import PUBLIC, STR, ApiRoute, Doc, array, obj
from .sse import EventStream, sse
from .validation import parse_json, validate

__all__ = ["routes"]


ConversationId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]


class ConversationChat(ChatRequest):
    """A question that continues the conversation called ``conversation_id`` (a new one
    when omitted or unknown): its recent turns become the history (ragline.history)."""

    conversation_id: ConversationId | None = None

    def question(self, remembered: tuple[Any, ...]) -> ChatRequest:
        data = self.model_dump(exclude={"conversation_id", "history"})
        return ChatRequest.model_validate({**data, "history": remembered + self.history})


class NativeEvents:
    """``event: conversation`` first, ``data: {"delta": ...}`` per chunk, then ``event:
    done`` or ``event: error``."""

    def __init__(self, conversation_id: str | None = None) -> None:
        self.conversation_id = conversation_id

    def opening(self) -> bytes:
        if self.conversation_id is None:
            return b""
        return sse({"conversation_id": self.conversation_id}, event="conversation")

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
        if result.usage.finish_reason in GUARD_STOPS:
            # The deltas went out before the loop was known: this is the answer to keep.
            done["text"] = result.text
        if self.conversation_id is not None:
            done["conversation_id"] = self.conversation_id
        return sse(done, event="done")

    def error(self, status: int, body: dict[str, Any], result: ChatResult) -> bytes:
        return sse(
            {**body, "status": status, "usage": result.usage.model_dump(mode="json")}, event="error"
        )


async def _continued(ctx: RequestContext, body: ConversationChat) -> tuple[str, ChatRequest]:
    """The conversation's id (a new one if none was named) and the question with its
    turns as history; someone else's conversation is a 404."""
    if body.conversation_id is None:
        return f"conv_{uuid.uuid4().hex}", body.question(())
    remembered = await ctx.runtime.history.recall(
        body.conversation_id, ctx.lifetime, principal=caller(ctx)
    )
    return body.conversation_id, body.question(remembered)


async def _remember(
    ctx: RequestContext, conversation_id: str, question: ChatRequest, result: ChatResult
) -> None:
    """Add the turn, however it ended: an answer cut short keeps what it said."""
    # last_words is a shielded scope with a deadline (flake8-async cannot see it).
    with ctx.lifetime.last_words(_LAST_SAVE) as words:
        await ctx.runtime.history.remember(  # noqa: ASYNC102
            conversation_id, caller(ctx).name, question.query, result.text, words
        )


_LAST_SAVE = 2.0  # seconds a turn cut short has to be saved


async def chat(request: Request) -> Response:
    """``POST /api/v1/inference/chat`` → ``{text, sources, usage, conversation_id}``."""
    ctx = request_context(request.scope)
    body = validate(ConversationChat, parse_json(await request.body()))
    conversation_id, question = await _continued(ctx, body)
    result = ChatResult()
    try:
        await ctx.runtime.pipeline.run(question, ctx.lifetime, into=result)
    finally:
        await _remember(ctx, conversation_id, question, result)  # noqa: ASYNC102
    return JSONResponse({**result.model_dump(mode="json"), "conversation_id": conversation_id})


async def stream(request: Request) -> ConversationStream:
    """``GET /api/v1/inference/stream?query=…&top_k=…&conversation_id=…`` → server-sent
    events."""
    ctx = request_context(request.scope)
    params: dict[str, Any] = dict(request.query_params)
    body = validate(ConversationChat, params)
    conversation_id, question = await _continued(ctx, body)
    return ConversationStream(ctx, conversation_id, question)


class ConversationStream:
    """The answer's events, then the turn saved however the stream ended (an ASGI app)."""

    def __init__(self, ctx: RequestContext, conversation_id: str, question: ChatRequest) -> None:
        self.ctx = ctx
        self.conversation_id = conversation_id
        self.question = question

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx, question = self.ctx, self.question
        result = ChatResult()

        async def work(on_delta: OnDelta, on_event: OnEvent) -> None:
            await ctx.runtime.pipeline.run(question, ctx.lifetime, on_delta=on_delta, into=result)

        events = EventStream(ctx, NativeEvents(self.conversation_id), work, result)
        try:
            await events(scope, receive, send)
        finally:
            await _remember(ctx, self.conversation_id, question, result)  # noqa: ASYNC102


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
            body=ConversationChat,
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
            query=ConversationChat,
            params=("query", "top_k", "collection", "max_tokens", "temperature", "conversation_id"),
            media="text/event-stream",
            events=("conversation", "message: {delta}", "done", "error"),
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
