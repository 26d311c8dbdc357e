"""The web page (``/``, its assets under ``/ui/``) and request outcomes.

The page is three static files inside the package, read once when the application is
built: nothing to build at install time, nothing fetched from elsewhere. It holds no
data; everything it shows it asks the API for, with the key the user gave it when keys
are on, so the page itself is public.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import NotFound
from .boundary import Policy, PolicyRoute, request_context

__all__ = ["outcome_routes", "page_routes"]

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
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
    """``GET /`` and ``GET /ui/{app.js,style.css}``."""
    folder = resources.files("ragline.server") / "static"
    files = {name: (folder / name).read_bytes() for name in _TYPES}

    def serve(name: str) -> Response:
        return Response(files[name], media_type=_TYPES[name], headers=_HEADERS)

    async def index(request: Request) -> Response:
        return serve("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "index.html":
            raise NotFound(f"no asset {name!r}", code="not_found")
        return serve(name)

    public = Policy(auth="public")
    return [
        PolicyRoute("/", index, methods=["GET"], policy=public),
        PolicyRoute("/ui/{name}", asset, methods=["GET"], policy=public),
    ]


async def outcome(request: Request) -> Response:
    """``GET /api/v1/requests/{request_id}``: how a recent request ended (its cause, the
    tokens generated, how soon the model's connection closed). With API keys on, only
    for the key that made it."""
    ctx = request_context(request.scope)
    request_id = request.path_params["request_id"]
    found = ctx.runtime.outcomes.get(request_id, ctx.owner)
    if found is None:
        raise NotFound(f"no recent request {request_id!r}", code="request_not_found")
    return JSONResponse(found.public())


outcome_routes = [Route("/api/v1/requests/{request_id}", outcome, methods=["GET"])]
