"""An OpenAI-compatible face: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Compatible enough that the official ``openai`` SDK works unchanged. Retrieval augments the
last user message; earlier messages are kept as history. ``top_k`` may be passed as an
extra body field. Sources come back in an extra ``ragline`` field.

Tools sent by the client are offered to the model, and its calls come back as
``tool_calls`` (finish reason ``tool_calls``), as OpenAI does; the client sends the
results back as ``tool`` messages. With an extra ``ragline`` field (``{"tools": [...],
"max_steps": ...}``) ragline runs the loop itself with its server-side tools and streams
its steps as chunks with no choices and a ``ragline`` field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..agent import AgentResult, OnEvent, check_tools
from ..errors import InvalidRequest, NotFound
from ..models import ChatRequest, ChatResult, Message, ToolCall, ToolSpec
from ..providers import OnDelta
from .boundary import request_context
from .routing import OBJECT, ApiRoute, Doc
from .runs_api import LoopOptions, server_tools
from .sse import EventStream, Work, sse
from .validation import parse_json, validate

__all__ = ["routes"]


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _InFunctionCall(BaseModel):
    name: str
    arguments: str = ""


class _InToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: _InFunctionCall


class _InMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    tool_calls: list[_InToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def message(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidRequest(
                "a tool message needs its tool_call_id", param="messages", code="invalid_request"
            )
        calls = tuple(
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in self.tool_calls or ()
        )
        role = "system" if self.role == "developer" else self.role
        return Message(
            role=role, content=self.text(), tool_calls=calls, tool_call_id=self.tool_call_id
        )


class _InFunction(BaseModel):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class _InTool(BaseModel):
    type: Literal["function"]
    function: _InFunction


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
    top_p: float | None = Field(None, gt=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    top_k: int = Field(4, ge=1, le=50)
    tools: list[_InTool] | None = Field(None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    ragline: LoopOptions | None = None  # server-side tools: ragline runs the loop itself


def _to_chat_request(body: CompletionRequest) -> ChatRequest:
    # The last user message is the query (retrieval augments it); what follows it is a
    # tool exchange in progress, sent back to the model as it is.
    users = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not users or any(
        m.role not in ("assistant", "tool") for m in body.messages[users[-1] :][1:]
    ):
        raise InvalidRequest(
            "the last message must come from the user, or be followed only by assistant "
            "tool calls and tool results",
            param="messages",
            code="invalid_request",
        )
    last = users[-1]
    tools = tuple(
        _tool_spec(t.function.name, t.function.description, t.function.parameters)
        for t in body.tools or ()
    )
    data = {
        "query": body.messages[last].text(),
        "top_k": body.top_k,
        "history": tuple(m.message() for m in body.messages[:last]),
        "continuation": tuple(m.message() for m in body.messages[last + 1 :]),
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
        "stop": body.stop or (),
        "seed": body.seed,
        "tools": tools,
        "tool_choice": body.tool_choice if tools else None,
    }
    return validate(ChatRequest, data)


def _tool_spec(name: str, description: str, parameters: dict[str, Any]) -> ToolSpec:
    try:
        return ToolSpec(name=name, description=description, parameters=parameters)
    except ValidationError:
        raise InvalidRequest(
            f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'",
            param="tools",
            code="invalid_request",
        ) from None


def _tool_calls(result: ChatResult) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in result.tool_calls
    ]


_OPENAI_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter"})


def _finish(result: ChatResult) -> str:
    """A finish reason the official SDKs know: ragline's own (``repetition``, when the
    degeneration guard ended the answer) goes in the ``ragline`` field instead."""
    reason = result.usage.finish_reason
    return reason if reason in _OPENAI_FINISH else "stop"


def _extra(result: ChatResult) -> dict[str, Any]:
    extra: dict[str, Any] = {"sources": [s.model_dump(mode="json") for s in result.sources]}
    if result.usage.finish_reason not in _OPENAI_FINISH | {None}:
        extra["finish_reason"] = result.usage.finish_reason
    if isinstance(result, AgentResult):
        extra["finish_reason"] = result.finish_reason
        extra["steps"] = [s.model_dump(mode="json") for s in result.steps]
    return extra


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
            self._delta_head, _, self._delta_tail = head.partition(orjson.dumps(marker))
        return self._delta_head + orjson.dumps(text) + self._delta_tail

    def progress(self, event: str, data: dict[str, Any]) -> bytes:
        # An agent loop's steps, in chunks with no choices: SDKs pass them over.
        return self._chunk([], ragline={"event": event, **data})

    def done(self, result: ChatResult) -> bytes:
        out = b""
        if result.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(_tool_calls(result))]
            out += self._chunk(
                [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]
            )
        extra = _extra(result)
        extra.pop("steps", None)  # already streamed as progress
        out += self._chunk(
            [{"index": 0, "delta": {}, "finish_reason": _finish(result)}],
            ragline=extra,
        )
        if self.include_usage:
            out += self._chunk([], usage=_usage(result))
        return out + sse("[DONE]")

    def error(self, status: int, body: dict[str, Any], result: ChatResult) -> bytes:
        return sse({**body, "usage": _usage(result)})


async def chat_completions(request: Request) -> Response | EventStream:
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
    runtime = ctx.runtime
    result: ChatResult
    work: Work
    if body.ragline is not None:
        # ragline runs the loop with its own tools; the client's tools, if any, come back
        # to the client as tool calls.
        options = body.ragline
        tools = server_tools(runtime, options.tools)
        check_tools(chat_request, tools)
        limits = options.limits(runtime.agent.limits)
        result = looped = AgentResult()

        async def work(on_delta: OnDelta | None, on_event: OnEvent | None) -> None:
            await runtime.agent.run(
                chat_request,
                ctx.lifetime,
                tools=tools,
                limits=limits,
                on_delta=on_delta,
                on_event=on_event,
                into=looped,
            )
    else:
        result = ChatResult()

        async def work(on_delta: OnDelta | None, on_event: OnEvent | None) -> None:
            await runtime.pipeline.run(chat_request, ctx.lifetime, on_delta=on_delta, into=result)

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStream(ctx, CompletionChunks(model, include_usage), work, result)
    await work(None, None)
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["tool_calls"] = _tool_calls(result)
        message["content"] = result.text or None
    # orjson: the whole answer is encoded on the path every plain request takes.
    return _json(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": _finish(result),
                    "logprobs": None,
                }
            ],
            "usage": _usage(result),
            "ragline": _extra(result),
        }
    )


def _json(content: dict[str, Any]) -> Response:
    try:
        return Response(orjson.dumps(content), media_type="application/json")
    except orjson.JSONEncodeError:  # an integer past 64 bits, from a tool call's arguments
        return JSONResponse(content)


async def models(request: Request) -> Response:
    """``GET /v1/models``: the chat model, then the embedding model when retrieval is on
    (``POST /v1/embeddings``)."""
    pipeline = request_context(request.scope).runtime.pipeline
    names = [pipeline.generator.model]
    if pipeline.embedder is not None:
        names.append(pipeline.embedder.model)
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "ragline"}
                for name in dict.fromkeys(names)  # one entry if both have the same name
            ],
        }
    )


routes = [
    ApiRoute(
        "/v1/chat/completions",
        chat_completions,
        methods=["POST"],
        doc=Doc(
            "OpenAI-compatible chat completions",
            "openai",
            body=CompletionRequest,
            result=OBJECT,
            events=("data: chat.completion.chunk", "data: [DONE]"),
            errors=(400, 401, 404, 413, 422, 429, 502, 503, 504),
        ),
    ),
    ApiRoute(
        "/v1/models",
        models,
        methods=["GET"],
        doc=Doc("The models ragline serves", "openai", result=OBJECT, errors=(401,)),
    ),
]
