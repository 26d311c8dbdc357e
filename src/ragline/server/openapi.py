"""The OpenAPI 3.1 document (``/openapi.json``) and a page to read it (``/docs``).

The document is built by walking the app's routes: each :class:`~.routing.ApiRoute`
carries its path and methods (Starlette's), its policy (public, or needs a key) and its
:class:`~.routing.Doc` (summary, request and response models, events, error statuses).
Request bodies and query parameters are the JSON schemas of the pydantic models the
routes validate with, so the document cannot drift from what the server accepts. The
page is static, inside the package: no CDN.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from .routing import OBJECT, PUBLIC, STR, ApiRoute, Doc, obj

__all__ = ["document", "routes"]

_ERRORS = {
    400: "Malformed JSON",
    401: "Missing or invalid API key",
    403: "You may read this collection but not write it",
    404: "Not found (or not yours: nothing tells the difference)",
    409: "The name is taken",
    413: "Body too large",
    422: "Invalid request",
    429: "The model server's rate limit (Retry-After)",
    499: "The client went away (logs and metrics only)",
    502: "The model server failed",
    503: "Shutting down, overloaded, or an engine unavailable (Retry-After)",
    504: "A deadline passed",
}
_ERROR = obj(
    error=obj(message=STR, type=STR, code=STR, param={"type": ["string", "null"]}, cause=STR)
)
# One server-sent event, as a client parses it: its type (``message`` when unnamed), its
# data (JSON, or ``[DONE]``) and, on runs, its number for Last-Event-ID.
_EVENT = obj(event=STR, data=STR, id=STR)

_Refs = dict[type[BaseModel], dict[str, Any]]


def _models(schema: Any) -> Iterator[type[BaseModel]]:
    """The models in a :class:`Doc`'s schema (a model, or a JSON schema holding some)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        yield schema
    elif isinstance(schema, dict):
        for value in schema.values():
            yield from _models(value)
    elif isinstance(schema, list | tuple):
        for value in schema:
            yield from _models(value)


def _resolve(schema: Any, refs: _Refs) -> Any:
    """``schema`` with each model in it replaced by a reference to its component."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return refs[schema]
    if isinstance(schema, dict):
        return {key: _resolve(value, refs) for key, value in schema.items()}
    if isinstance(schema, list | tuple):
        return [_resolve(value, refs) for value in schema]
    return schema


def _content(doc: Doc, refs: _Refs) -> dict[str, Any]:
    if doc.media == "application/json":
        content = {"application/json": {"schema": _resolve(doc.result or OBJECT, refs)}}
        if doc.events:  # the same route streams when asked to ("stream": true)
            content["text/event-stream"] = {"schema": _EVENT}
        return content
    if doc.media == "text/event-stream":
        return {doc.media: {"schema": _EVENT}}
    return {doc.media: {"schema": STR}}


def _parameter(schema: dict[str, Any]) -> dict[str, Any]:
    """A model field's schema as a query parameter's: an optional value is left out,
    never ``null``; and its length is bounded by the HTTP server's limit on a request
    line (which resets a longer one before ragline sees it), not by the field's."""
    skip = ("title", "maxLength")
    out = {key: value for key, value in schema.items() if key not in skip}
    options = [option for option in out.get("anyOf", ()) if option != {"type": "null"}]
    if "anyOf" in out and len(options) == 1:
        del out["anyOf"]
        out.update(options[0])
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _parameters(route: ApiRoute, doc: Doc, refs: _Refs, schemas: dict[str, Any]) -> list[Any]:
    found: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": STR}
        for name in route.param_convertors
    ]
    if doc.query is not None:
        model = schemas[refs[doc.query]["$ref"].rsplit("/", 1)[-1]]
        for name in doc.params or tuple(model["properties"]):
            found.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in model.get("required", ()),
                    "schema": _parameter(model["properties"][name]),
                }
            )
    return found


def _operation(
    route: ApiRoute, method: str, doc: Doc, refs: _Refs, schemas: dict[str, Any]
) -> dict[str, Any]:
    public = route.policy.auth != "api_keys"  # "own": a credential the route checks itself
    described = doc.summary
    if doc.events:
        described += ". Events: " + ", ".join(doc.events) + "."
    out: dict[str, Any] = {
        "summary": doc.summary,
        "description": described,
        "tags": [doc.tag],
        "operationId": f"{method}_{route.path.strip('/').replace('/', '_') or 'root'}",
        "responses": {str(doc.ok): {"description": "OK", "content": _content(doc, refs)}},
    }
    parameters = _parameters(route, doc, refs, schemas)
    if parameters:
        out["parameters"] = parameters
    if doc.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": _resolve(doc.body, refs)}}
        if doc.form is not None:
            content["multipart/form-data"] = {"schema": doc.form}
        out["requestBody"] = {"required": True, "content": content}
    statuses = [*doc.errors, 499] if doc.errors and not public else list(doc.errors)
    for status in statuses:
        out["responses"][str(status)] = {
            "description": _ERRORS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status in (429, 503):
            out["responses"][str(status)]["headers"] = {
                "Retry-After": {"schema": STR, "description": "seconds to wait"}
            }
    if public:
        out["security"] = []
    return out


def _described(routes: Sequence[BaseRoute]) -> Iterator[tuple[ApiRoute, Doc]]:
    for route in routes:
        if isinstance(route, ApiRoute) and route.doc is not None:
            yield route, route.doc


def document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (those that carry a :class:`Doc`)."""
    described = list(_described(routes))
    models = list(
        dict.fromkeys(
            model
            for _, doc in described
            for schema in (doc.body, doc.query, doc.result)
            for model in _models(schema)
        )
    )
    mode: Literal["validation"] = "validation"
    found, defs = models_json_schema(
        [(m, mode) for m in models], ref_template="#/components/schemas/{model}"
    )
    refs: _Refs = {model: dict(found[model, mode]) for model in models}
    schemas: dict[str, Any] = {**defs.get("$defs", {}), "Error": _ERROR}
    paths: dict[str, Any] = {}
    for route, doc in described:
        for method in sorted(m.lower() for m in (route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method] = _operation(route, method, doc, refs, schemas)
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
        "paths": paths,
    }


def routes(registered: Sequence[BaseRoute]) -> list[BaseRoute]:
    """``GET /openapi.json`` and ``GET /docs``, describing the routes ``registered``
    and themselves."""
    found: dict[str, Any] = {}
    page = (resources.files("ragline.server") / "static" / "docs.html").read_bytes()

    async def openapi(request: Request) -> Response:
        return JSONResponse(found)

    async def docs(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    own: list[BaseRoute] = [
        ApiRoute(
            "/openapi.json",
            openapi,
            methods=["GET"],
            policy=PUBLIC,
            doc=Doc("This document", "page", result=OBJECT, errors=()),
        ),
        ApiRoute(
            "/docs",
            docs,
            methods=["GET"],
            policy=PUBLIC,
            doc=Doc("A page to read this document", "page", media="text/html", errors=()),
        ),
    ]
    found.update(document([*registered, *own]))
    return own
