"""Routes that describe themselves. Starlette's routes carry their path and methods; an
:class:`ApiRoute` also carries its :class:`Policy` (who may call it, how large a body it
takes), which the boundary applies, and its :class:`Doc`, from which ``/openapi.json``
is built. Nothing else repeats a route's path, method or public-ness in a table of its
own. Also here: finding a request's route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

__all__ = [
    "ADMIN",
    "OBJECT",
    "PUBLIC",
    "STR",
    "ApiRoute",
    "Doc",
    "Policy",
    "array",
    "matched_route",
    "obj",
]

Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Policy:
    """How the boundary treats a route's requests. ``auth``: ``api_keys`` (a principal's
    bearer key, once any credential exists: :mod:`ragline.principals`), ``public``, or
    ``own`` (the route checks its own credential, as the Teams webhook does its JWT);
    ``admin``: for administrators only (anyone else gets the 404 of a route that does
    not exist); ``upload``: bodies up to ``RAGLINE_MAX_UPLOAD_BYTES`` instead of
    ``RAGLINE_MAX_BODY_BYTES``."""

    auth: Literal["api_keys", "public", "own"] = "api_keys"
    upload: bool = False
    admin: bool = False


DEFAULT_POLICY = Policy()
PUBLIC = Policy(auth="public")
ADMIN = Policy(admin=True)


@dataclass(frozen=True, slots=True)
class Doc:
    """A route's OpenAPI description.

    ``body`` and ``result`` are pydantic models (their JSON schemas, so the document
    cannot drift from what the route validates) or JSON schemas, in which a model stands
    for a reference to its own schema. ``query``: a model whose fields (``params``, or
    all of them) the route reads from its query string; ``form``: the schema of a
    ``multipart/form-data`` body it also takes. ``ok``, ``media``: the status and type of
    its answer; ``events``: the server-sent events of a streaming answer; ``errors``: the
    error statuses it answers with. Whether it needs a key is its :class:`Policy`'s.
    """

    summary: str
    tag: str
    body: type[BaseModel] | Schema | None = None
    query: type[BaseModel] | None = None
    params: tuple[str, ...] = ()
    form: Schema | None = None
    ok: int = 200
    result: type[BaseModel] | Schema | None = None
    media: str = "application/json"
    events: tuple[str, ...] = ()
    errors: tuple[int, ...] = (401, 422, 503, 504)


class ApiRoute(Route):
    """A Starlette route that tells the boundary its :class:`Policy` and the OpenAPI
    document its :class:`Doc`."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        methods: list[str] | None = None,
        policy: Policy | None = None,
        doc: Doc | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.policy = policy or DEFAULT_POLICY
        self.doc = doc


def obj(**properties: Any) -> Schema:
    """The schema of an object with these ``properties``."""
    return {"type": "object", "properties": properties}


def array(items: type[BaseModel] | Schema) -> Schema:
    """The schema of an array of ``items``."""
    return {"type": "array", "items": items}


STR: Schema = {"type": "string"}
OBJECT: Schema = {"type": "object"}


def matched_route(scope: Scope, routes: Sequence[BaseRoute]) -> BaseRoute | None:
    """The route a request went to, or would go to when the router has not seen it yet
    (a request answered before routing: too large, unauthorized)."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
    return route if isinstance(route, BaseRoute) else None
