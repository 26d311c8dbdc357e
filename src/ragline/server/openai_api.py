"""An OpenAI-compatible face: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Compatible enough that the official ``openai`` SDK works unchanged. Retrieval augments the
last user message; earlier messages are kept as history. ``top_k`` may be passed as an
extra body field. Sources come back in an extra ``ragline`` field.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InvalidRequest, NotFound
from ..models import ChatRequest, ChatResult, Message
from .boundary import request_context
from .events import EventStreamResponse, sse
from .validation import parse_json, validate

__all__ = ["routes"]


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _InMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The subset of the chat completions request that ragline honours."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: Annotated[list[_InMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    n: int = Field(1, ge=1, le=1)
    top_k: int = Field(4, ge=1, le=50)


def _to_chat_request(body: CompletionRequest) -> ChatRequest:
    last = body.messages[-1]
    if last.role != "user":
        raise InvalidRequest(
            "the last message must come from the user", param="messages", code="invalid_request"
        )
    history = tuple(
        Message(role="system" if m.role == "developer" else m.role, content=m.text())
        for m in body.messages[:-1]
    )
    data = {
        "query": last.text(),
        "top_k": body.top_k,
        "history": history,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
    }
    return validate(ChatRequest, data)


def _usage(result: ChatResult) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


class CompletionChunks:
    """``chat.completion.chunk`` events, a usage chunk when asked, then ``[DONE]``."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._delta_head: bytes | None = None
        self._delta_tail = b""

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def opening(self) -> bytes:
        return self._chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def delta(self, text: str) -> bytes:
        # The hot path: one per write while generating. Only the text needs encoding.
        if self._delta_head is None:
            marker = "\x1fdelta\x1f"
            head = self._chunk([{"index": 0, "delta": {"content": marker}, "finish_reason": None}])
            self._delta_head, _, self._delta_tail = head.partition(json.dumps(marker).encode())
        return self._delta_head + json.dumps(text).encode() + self._delta_tail

    def done(self, result: ChatResult) -> bytes:
        sources = [s.model_dump(mode="json") for s in result.sources]
        out = self._chunk(
            [{"index": 0, "delta": {}, "finish_reason": result.usage.finish_reason or "stop"}],
            ragline={"sources": sources},
        )
        if self.include_usage:
            out += self._chunk([], usage=_usage(result))
        return out + sse("[DONE]")

    def error(self, status: int, body: dict[str, Any], result: ChatResult) -> bytes:
        return sse({**body, "usage": _usage(result)})


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``, streaming or not."""
    ctx = request_context(request.scope)
    body = validate(CompletionRequest, parse_json(await request.body()))
    model = ctx.runtime.pipeline.generator.model
    if body.model != model:
        raise NotFound(
            f"model {body.model!r} does not exist; this server serves {model!r}",
            code="model_not_found",
        )
    chat_request = _to_chat_request(body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStreamResponse(ctx, chat_request, CompletionChunks(model, include_usage))
    result = await ctx.runtime.pipeline.run(chat_request, ctx.lifetime)
    return JSONResponse(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.usage.finish_reason or "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(result),
            "ragline": {"sources": [s.model_dump(mode="json") for s in result.sources]},
        }
    )


async def models(request: Request) -> Response:
    """``GET /v1/models``: the one model this server answers with."""
    model = request_context(request.scope).runtime.pipeline.generator.model
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "ragline"},
            ],
        }
    )


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
]
