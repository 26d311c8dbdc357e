"""The web page (``/``, its assets under ``/ui/``) and request outcomes.

The page is static files inside the package (``index.html``, ``style.css`` and native ES
modules, ``app.js`` first), read once when the application is built: nothing to build at
install time, nothing fetched from elsewhere. It holds no data; everything it shows it
asks the API for, with the key the user gave it when keys are on, so the page itself is
public.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePath

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ..access import owned
from ..errors import NotFound
from .boundary import caller, request_context
from .routing import PUBLIC, STR, ApiRoute, Doc, obj

__all__ = ["outcome_routes", "page_routes"]

# The assets under /ui/ are the folder's scripts (ES modules, which a browser loads only
# with a JavaScript type) and style sheets; nothing else in it is reachable there.
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_HEADERS = {
    # Same origin only: no inline script, no third party, not framed.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def page_routes() -> list[BaseRoute]:
    """``GET /`` and ``GET /ui/{name}`` (``app.js``, the modules it imports, ``style.css``)."""
    folder = resources.files("ragline.server") / "static"
    page = (folder / "index.html").read_bytes()
    assets = {
        item.name: (item.read_bytes(), _TYPES[PurePath(item.name).suffix])
        for item in folder.iterdir()
        if item.is_file() and PurePath(item.name).suffix in _TYPES
    }

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            raise NotFound(f"no asset {name!r}", code="not_found")
        body, media_type = assets[name]
        return Response(body, media_type=media_type, headers=_HEADERS)

    return [
        ApiRoute(
            "/",
            index,
            methods=["GET"],
            policy=PUBLIC,
            doc=Doc("The web page", "page", media="text/html", errors=()),
        ),
        ApiRoute(
            "/ui/{name}",
            asset,
            methods=["GET"],
            policy=PUBLIC,
            doc=Doc("The web page's assets", "page", media="text/plain", errors=(404,)),
        ),
    ]


async def outcome(request: Request) -> Response:
    """``GET /api/v1/requests/{request_id}``: how a recent request ended (its cause, the
    tokens generated, how soon the model's connection closed): for the principal who made
    it, and admins; anyone else gets the 404 of a request never made."""
    ctx = request_context(request.scope)
    request_id = request.path_params["request_id"]
    found = ctx.host.outcomes.get(request_id)
    missing = NotFound(f"no recent request {request_id!r}", code="request_not_found")
    if found is None:
        raise missing
    owned(caller(ctx), found.owner, missing)
    return JSONResponse(found.public())


outcome_routes = [
    ApiRoute(
        "/api/v1/requests/{request_id}",
        outcome,
        methods=["GET"],
        doc=Doc(
            "How a recent request ended",
            "requests",
            result=obj(
                request_id=STR,
                route=STR,
                status={"type": ["integer", "null"]},
                cause={"type": ["string", "null"]},
                completion_tokens={"type": "integer"},
                tokens_after_cancel={"type": "integer"},
                upstream_closed_ms={"type": ["number", "null"]},
                duration_ms={"type": "number"},
            ),
            errors=(401, 404),
        ),
    )
]
