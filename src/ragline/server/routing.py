"""Routes that describe themselves. Starlette's routes carry their path and methods; an
:class:`ApiRoute` also carries its :class:`Policy` (who may call it, how large a body it
takes), which the boundary applies, and its :class:`Doc`, from which ``/openapi.json``
is built. Nothing else repeats a route's path, method or public-ness in a table of its
own. Also here: finding a request's route, and checking its API key against the policy.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, SecretStr
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

__all__ = [
    "OBJECT",
    "PUBLIC",
    "STR",
    "ApiKeys",
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
    """How the boundary treats a route's requests. ``auth``: ``api_keys`` (the bearer
    keys of ``RAGLINE_API_KEYS``, when set), ``public``, or ``own`` (the route checks its
    own credential, as the Teams webhook does its JWT); ``upload``: bodies up to
    ``RAGLINE_MAX_UPLOAD_BYTES`` instead of ``RAGLINE_MAX_BODY_BYTES``."""

    auth: Literal["api_keys", "public", "own"] = "api_keys"
    upload: bool = False


DEFAULT_POLICY = Policy()
PUBLIC = Policy(auth="public")


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


class ApiKeys:
    """The bearer keys of ``RAGLINE_API_KEYS`` (none: every request passes)."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._keys = [k.get_secret_value().encode() for k in keys]

    def admit(self, authorization: str | None, policy: Policy) -> tuple[bool, str | None]:
        """Whether a request with this ``Authorization`` header passes ``policy``, and
        the digest of the key it presented (its owner), if that key is one of ours."""
        if not self._keys or policy.auth == "own":
            return True, None
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return policy.auth == "public", None
        given = presented.strip().encode()
        # Compare against every key so the time taken does not tell which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        owner = hashlib.sha256(given).hexdigest() if matched else None
        return matched or policy.auth == "public", owner
