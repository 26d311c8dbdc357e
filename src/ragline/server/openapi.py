"""The OpenAPI 3.1 document (``/openapi.json``) and a page to read it (``/docs``).

Request bodies are the JSON schemas of the pydantic models the routes validate with, so
the document cannot drift from what the server accepts; responses and the events of the
streaming routes are described here, next to one another. The page is static, inside the
package: no CDN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ..models import ChatRequest, ChatResult, RetrieveRequest, Source
from .boundary import Policy, PolicyRoute
from .ingest_api import IngestRequest
from .openai_api import CompletionRequest
from .runs_api import RunRequest

__all__ = ["document", "routes"]

_ERRORS = {
    400: "Malformed JSON",
    401: "Missing or invalid API key",
    404: "Not found",
    413: "Body too large",
    422: "Invalid request",
    429: "The model server's rate limit (Retry-After)",
    499: "The client went away (logs and metrics only)",
    502: "The model server failed",
    503: "Shutting down, overloaded, or an engine unavailable (Retry-After)",
    504: "A deadline passed",
}
_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class _Op:
    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    upload: bool = False  # multipart/form-data too
    query: dict[str, Any] | None = None  # parameter name: schema
    ok: int = 200
    result: type[BaseModel] | dict[str, Any] | None = None
    media: str = "application/json"
    events: tuple[str, ...] = ()  # the SSE event types of a streaming answer
    errors: tuple[int, ...] = (401, 422, 503, 504)
    public: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_JOB = _object(
    job_id=_STR,
    state={"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    collection=_STR,
    progress={"type": ["object", "null"]},
    error={"type": ["string", "null"]},
    cause={"type": ["string", "null"]},
)
_STREAM_QUERY = {
    "query": {"type": "string", "minLength": 1},
    "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
    "collection": _STR,
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
}
_OPS = [
    _Op(
        "post",
        "/api/v1/inference/chat",
        "Answer a question (whole)",
        "chat",
        ChatRequest,
        result=ChatResult,
        errors=(400, 401, 413, 422, 429, 502, 503, 504),
    ),
    _Op(
        "get",
        "/api/v1/inference/stream",
        "Answer a question as server-sent events",
        "chat",
        query=_STREAM_QUERY,
        media="text/event-stream",
        events=("message: {delta}", "done", "error"),
        errors=(401, 422, 429, 502, 503, 504),
    ),
    _Op(
        "post",
        "/api/v1/retrieve",
        "Ranked passages, no generation",
        "chat",
        RetrieveRequest,
        result=_object(hits={"type": "array", "items": {"$ref": "#/components/schemas/Source"}}),
        errors=(400, 401, 413, 422, 502, 503, 504),
    ),
    _Op(
        "post",
        "/v1/chat/completions",
        "OpenAI-compatible chat completions",
        "openai",
        CompletionRequest,
        result=_OBJECT,
        media="application/json",
        events=("data: chat.completion.chunk", "data: [DONE]"),
        errors=(400, 401, 404, 413, 422, 429, 502, 503, 504),
    ),
    _Op("get", "/v1/models", "The model ragline serves", "openai", result=_OBJECT, errors=(401,)),
    _Op(
        "post",
        "/api/v1/ingest",
        "Start an ingestion job (JSON or multipart upload)",
        "documents",
        IngestRequest,
        upload=True,
        ok=202,
        result=_object(job_id=_STR),
        errors=(400, 401, 413, 422, 503),
    ),
    _Op(
        "get",
        "/api/v1/ingest/{job_id}",
        "A job's state and progress",
        "documents",
        result=_JOB,
        errors=(401, 404, 422),
    ),
    _Op(
        "delete",
        "/api/v1/ingest/{job_id}",
        "Stop a job at its next batch boundary",
        "documents",
        ok=202,
        result=_JOB,
        errors=(401, 404, 422),
    ),
    _Op(
        "get",
        "/api/v1/collections",
        "Every collection with its counts",
        "documents",
        result=_object(collections={"type": "array", "items": _OBJECT}),
        errors=(401,),
    ),
    _Op(
        "get",
        "/api/v1/collections/{name}",
        "One collection",
        "documents",
        result=_OBJECT,
        errors=(401, 404),
    ),
    _Op(
        "post",
        "/api/v1/runs",
        "Start a background agent run",
        "runs",
        RunRequest,
        ok=202,
        result=_object(run_id=_STR),
        errors=(400, 401, 413, 422, 503),
    ),
    _Op(
        "get",
        "/api/v1/runs/{run_id}",
        "A run's state, steps and answer",
        "runs",
        result=_OBJECT,
        errors=(401, 404),
    ),
    _Op(
        "delete",
        "/api/v1/runs/{run_id}",
        "Cancel a run",
        "runs",
        ok=202,
        result=_OBJECT,
        errors=(401, 404),
    ),
    _Op(
        "get",
        "/api/v1/runs/{run_id}/events",
        "A run's events as they come",
        "runs",
        media="text/event-stream",
        events=("step", "tool_call", "tool_result", "step_done", "done"),
        errors=(401, 404, 422),
    ),
    _Op(
        "get",
        "/api/v1/requests/{request_id}",
        "How a recent request ended",
        "requests",
        result=_object(
            request_id=_STR,
            route=_STR,
            status={"type": ["integer", "null"]},
            cause={"type": ["string", "null"]},
            completion_tokens=_INT,
            tokens_after_cancel=_INT,
            upstream_closed_ms={"type": ["number", "null"]},
            duration_ms={"type": "number"},
        ),
        errors=(401, 404),
    ),
    _Op(
        "post",
        "/api/messages",
        "The Microsoft Teams bot webhook (JWT from the Bot Framework)",
        "teams",
        result=_OBJECT,
        ok=202,
        errors=(400, 401, 404, 413, 422, 503),
        public=True,
        extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _OBJECT}}}
        },
    ),
    _Op(
        "get", "/healthz", "Liveness", "health", result=_object(status=_STR), errors=(), public=True
    ),
    _Op(
        "get",
        "/readyz",
        "Readiness",
        "health",
        result=_object(status=_STR),
        errors=(503,),
        public=True,
    ),
    _Op("get", "/metrics", "Prometheus metrics", "health", media="text/plain", errors=(401,)),
    _Op("get", "/", "The web page", "page", media="text/html", errors=(), public=True),
    _Op(
        "get",
        "/ui/{name}",
        "The web page's assets",
        "page",
        media="text/plain",
        errors=(404,),
        public=True,
    ),
    _Op("get", "/openapi.json", "This document", "page", result=_OBJECT, errors=(), public=True),
    _Op(
        "get",
        "/docs",
        "A page to read this document",
        "page",
        media="text/html",
        errors=(),
        public=True,
    ),
]


# One server-sent event, as a client parses it: its type (``message`` when unnamed), its
# data (JSON, or ``[DONE]``) and, on runs, its number for Last-Event-ID.
_EVENT = _object(event=_STR, data=_STR, id=_STR)


def _content(op: _Op) -> dict[str, Any]:
    if op.media == "application/json":
        schema = op.result if isinstance(op.result, dict) else _ref(op.result)
        content = {"application/json": {"schema": schema or _OBJECT}}
        if op.events:  # the same route streams when asked to ("stream": true)
            content["text/event-stream"] = {"schema": _EVENT}
        return content
    if op.media == "text/event-stream":
        return {op.media: {"schema": _EVENT}}
    return {op.media: {"schema": _STR}}


def _ref(model: type[BaseModel] | None) -> dict[str, Any] | None:
    return {"$ref": f"#/components/schemas/{model.__name__}"} if model else None


def _operation(op: _Op) -> dict[str, Any]:
    described = op.summary
    if op.events:
        described += ". Events: " + ", ".join(op.events) + "."
    out: dict[str, Any] = {
        "summary": op.summary,
        "description": described,
        "tags": [op.tag],
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_') or 'root'}",
        "responses": {str(op.ok): {"description": "OK", "content": _content(op)}},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _STR}
        for name in _path_params(op.path)
    ]
    for name, schema in (op.query or {}).items():
        parameters.append(
            {"name": name, "in": "query", "required": name == "query", "schema": schema}
        )
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(op.body)}}
        if op.upload:
            files = {
                "type": "array",
                "items": {"type": "string", "contentMediaType": "application/octet-stream"},
            }
            content["multipart/form-data"] = {
                "schema": _object(files=files, collection=_STR, prune={"type": "string"})
            }
        out["requestBody"] = {"required": True, "content": content}
    statuses = [*op.errors, 499] if op.errors and not op.public else list(op.errors)
    for status in statuses:
        error = {"$ref": "#/components/schemas/Error"}
        out["responses"][str(status)] = {
            "description": _ERRORS[status],
            "content": {"application/json": {"schema": error}},
        }
        if status in (429, 503):
            out["responses"][str(status)]["headers"] = {
                "Retry-After": {"schema": _STR, "description": "seconds to wait"}
            }
    if op.public:
        out["security"] = []
    out.update(op.extra)
    return out


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def document(paths: set[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document, limited to ``paths`` (the routes the app has)."""
    models: list[type[BaseModel]] = [
        ChatRequest,
        ChatResult,
        RetrieveRequest,
        Source,
        IngestRequest,
        CompletionRequest,
        RunRequest,
    ]
    mode: Literal["validation"] = "validation"
    _, defs = models_json_schema(
        [(m, mode) for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Error"] = _object(
        error=_object(
            message=_STR, type=_STR, code=_STR, param={"type": ["string", "null"]}, cause=_STR
        ),
    )
    out_paths: dict[str, Any] = {}
    for op in _OPS:
        if paths is not None and op.path not in paths:
            continue
        out_paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ragline",
            "version": "0.1.0",
            "description": "Retrieval-augmented chat, streaming and ingestion in which every "
            "piece of work stops the moment its owner goes away.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": out_paths,
    }


def routes(registered: list[BaseRoute]) -> list[BaseRoute]:
    """``GET /openapi.json`` and ``GET /docs``, for the routes ``registered``."""
    paths = {getattr(r, "path", "") for r in registered} | {"/openapi.json", "/docs"}
    found = document(paths)
    page = (resources.files("ragline.server") / "static" / "docs.html").read_bytes()

    async def openapi(request: Request) -> Response:
        return JSONResponse(found)

    async def docs(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    public = Policy(auth="public")
    return [
        PolicyRoute("/openapi.json", openapi, methods=["GET"], policy=public),
        PolicyRoute("/docs", docs, methods=["GET"], policy=public),
    ]
